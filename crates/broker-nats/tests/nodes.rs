//! Two brokers with one prefix behave as two nodes of one deployment: publications, joins,
//! leaves and control messages cross between them; history, positions and presence are shared.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use switchboard_hub::{Broker, HistoryFilter, PresenceStore};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_channels_history_and_presence() {
    let cleanup = Cleanup::default();
    let started = Instant::now();
    with_cleanup(&cleanup, async {
        let prefix = unique_prefix("nodes");
        let a = connect(test_config(&nats_url(), &prefix), "node-a", Some(&cleanup)).await;
        let b = connect(test_config(&nats_url(), &prefix), "node-b", None).await;
        let (ea, eb) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        a.start(ea.clone());
        b.start(eb.clone());

        // A publication made on A reaches B (subscribed), not A (not subscribed).
        let ch = "chat:room.with*odd>name";
        b.subscribe(ch).await.unwrap();
        let opts = history_options();
        let first = a.publish(ch, publication(1), &opts).await.unwrap();
        assert_eq!(first.offset, 1);
        eventually("B receives A's publication", WAIT, || eb.offsets(ch) == [1]).await;

        // Publishers on both nodes share one stream: offsets keep growing by one.
        let second = b.publish(ch, publication(2), &opts).await.unwrap();
        assert_eq!((second.offset, &second.epoch), (2, &first.epoch));
        let third = a.publish(ch, publication(3), &opts).await.unwrap();
        assert_eq!(third.offset, 3);
        eventually("B receives all three", WAIT, || eb.offsets(ch) == [1, 2, 3]).await;
        assert!(ea.offsets(ch).is_empty());
        assert_eq!(eb.gap_count(ch), 0);

        // History written through A is read through B.
        let h = b
            .history(ch, &HistoryFilter::default(), Duration::from_secs(3600))
            .await
            .unwrap();
        let offsets: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, [1, 2, 3]);
        assert_eq!(h.position, third);

        // Joins and leaves published on A reach B.
        a.publish_join(ch, &info("u1", "c1")).await.unwrap();
        a.publish_leave(ch, &info("u1", "c1")).await.unwrap();
        eventually("B receives a join and a leave", WAIT, || {
            eb.joins(ch) == 1 && eb.leaves(ch) == 1
        })
        .await;

        // Control messages reach every node, the sender included.
        a.publish_control(b"{\"type\":\"hello\"}").await.unwrap();
        eventually("control on both nodes", WAIT, || {
            ea.control().len() == 1 && eb.control().len() == 1
        })
        .await;
        assert_eq!(eb.control()[0], b"{\"type\":\"hello\"}");

        // Presence added on each node is seen from the other.
        let ttl = Duration::from_secs(60);
        a.add_presence(ch, &info("u1", "c1"), ttl).await.unwrap();
        b.add_presence(ch, &info("u2", "c2"), ttl).await.unwrap();
        let p = b.presence(ch).await.unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p["c1"].user, "u1");
        let stats = a.presence_stats(ch).await.unwrap();
        assert_eq!((stats.num_clients, stats.num_users), (2, 2));
        b.remove_presence(ch, "c1").await.unwrap();
        assert_eq!(a.presence(ch).await.unwrap().len(), 1);

        // After B unsubscribes, it receives nothing more. NATS keeps the order of A's messages
        // to B's connection, so once a later message of another channel has been delivered on
        // B, publication 4 would have reached B too (rather than waiting a fixed time).
        let barrier = "chat:barrier";
        b.subscribe(barrier).await.unwrap();
        b.unsubscribe(ch).await.unwrap();
        a.publish(ch, publication(4), &opts).await.unwrap();
        a.publish(barrier, publication(5), &Default::default())
            .await
            .unwrap();
        eventually("the later message on B", WAIT, || {
            eb.offsets(barrier).len() == 1
        })
        .await;
        assert_eq!(eb.offsets(ch), [1, 2, 3]);
    })
    .await;
    eprintln!("two-node test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_only_mode_refuses_history_and_presence() {
    let prefix = unique_prefix("plain");
    let mut config = test_config(&nats_url(), &prefix);
    config.history = false;
    let a = connect(config.clone(), "plain-a", None).await;
    let b = connect(config, "plain-b", None).await;
    let eb = Arc::new(Recorder::default());
    a.start(Arc::new(Recorder::default()));
    b.start(eb.clone());
    b.subscribe("news").await.unwrap();
    let pos = a
        .publish("news", publication(1), &Default::default())
        .await
        .unwrap();
    assert_eq!(pos, Default::default());
    eventually("B receives it", WAIT, || eb.offsets("news") == [0]).await;
    let not_available = |r: Result<_, switchboard_hub::BrokerError>| {
        matches!(r, Err(switchboard_hub::BrokerError::NotAvailable))
    };
    assert!(not_available(
        a.publish("news", publication(2), &history_options())
            .await
            .map(drop)
    ));
    assert!(not_available(
        a.history("news", &HistoryFilter::default(), Duration::ZERO)
            .await
            .map(drop)
    ));
    assert!(not_available(a.presence("news").await.map(drop)));
    assert!(not_available(
        a.add_presence("news", &info("u", "c"), Duration::from_secs(5))
            .await
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_storage_removes_the_stream_and_buckets() {
    let prefix = unique_prefix("delete");
    let broker = connect(test_config(&nats_url(), &prefix), "delete", None).await;
    broker.start(Arc::new(Recorder::default()));
    broker
        .publish("c", publication(1), &history_options())
        .await
        .unwrap();
    broker.delete_storage().await.unwrap();
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    for name in ["history", "KV_{p}-meta", "KV_{p}-presence", "KV_{p}-idem"] {
        let name = if name == "history" {
            format!("{prefix}-history")
        } else {
            name.replace("{p}", &prefix)
        };
        assert!(js.get_stream(&name).await.is_err(), "{name} still exists");
    }
}

/// Not a benchmark: prints what one publish costs against the local server, so a regression
/// by an order of magnitude shows in the test log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_cost() {
    let cleanup = Cleanup::default();
    with_cleanup(&cleanup, async {
        let prefix = unique_prefix("cost");
        let a = connect(test_config(&nats_url(), &prefix), "cost", Some(&cleanup)).await;
        let events = Arc::new(Recorder::default());
        a.start(events.clone());
        a.subscribe("c").await.unwrap();
        const N: u64 = 300;
        let t = Instant::now();
        for n in 1..=N {
            a.publish("c", publication(n), &history_options())
                .await
                .unwrap();
        }
        let with_history = t.elapsed();
        let t = Instant::now();
        for n in 1..=N {
            a.publish("c", publication(n), &Default::default())
                .await
                .unwrap();
        }
        let plain = t.elapsed();
        eventually("all publications", WAIT, || {
            events.publications("c").len() == 2 * N as usize
        })
        .await;
        let t = Instant::now();
        let h = a
            .history("c", &HistoryFilter::default(), Duration::from_secs(3600))
            .await
            .unwrap();
        let read = t.elapsed();
        assert_eq!(h.publications.len(), 100);
        assert_eq!(h.publications[0].offset, N - 99);
        // The position alone (a positioned subscribe), right after a publish: the top is still
        // listed as pending in the meta, so the read checks the subject's last message.
        let mut top_only = HistoryFilter::default();
        top_only.limit = Some(0);
        let t = Instant::now();
        let h = a
            .history("c", &top_only, Duration::from_secs(3600))
            .await
            .unwrap();
        let position = t.elapsed();
        assert_eq!(h.position.offset, N);
        eprintln!(
            "sequential publish with history: {:?} each; without: {:?} each; reading 100: {read:?}; \
             position only: {position:?}",
            with_history / N as u32,
            plain / N as u32
        );
    })
    .await;
}

/// Publishers on two nodes racing into one channel: offsets stay unique and consecutive, the
/// history holds every publication, and a subscriber sees increasing offsets, with a gap
/// reported wherever one is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_two_nodes() {
    let cleanup = Cleanup::default();
    with_cleanup(&cleanup, async {
        let prefix = unique_prefix("race");
        let a = connect(test_config(&nats_url(), &prefix), "race-a", Some(&cleanup)).await;
        let b = connect(test_config(&nats_url(), &prefix), "race-b", None).await;
        let ea = Arc::new(Recorder::default());
        a.start(ea.clone());
        b.start(Arc::new(Recorder::default()));
        let ch = "race";
        a.subscribe(ch).await.unwrap();
        const EACH: u64 = 40;
        let mut tasks = Vec::new();
        for (node, broker) in [(0, a.clone()), (1, b.clone())] {
            for t in 0..2 {
                let broker = broker.clone();
                tasks.push(tokio::spawn(async move {
                    let mut offsets = Vec::new();
                    for n in 0..EACH / 2 {
                        let p = publication(node * 1000 + t * 100 + n);
                        offsets.push(
                            broker
                                .publish(ch, p, &history_options())
                                .await
                                .unwrap()
                                .offset,
                        );
                    }
                    offsets
                }));
            }
        }
        let mut offsets = Vec::new();
        for t in tasks {
            offsets.extend(t.await.unwrap());
        }
        offsets.sort_unstable();
        assert_eq!(offsets, (1..=2 * EACH).collect::<Vec<u64>>());

        let h = a
            .history(ch, &HistoryFilter::default(), Duration::from_secs(3600))
            .await
            .unwrap();
        let stored: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
        assert_eq!(stored, (1..=2 * EACH).collect::<Vec<u64>>());

        eventually("the last publication", WAIT, || {
            ea.offsets(ch).last() == Some(&(2 * EACH))
        })
        .await;
        let seen = ea.offsets(ch);
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        let missing = 2 * EACH as usize - seen.len();
        assert!(
            missing == 0 || ea.gap_count(ch) > 0,
            "{missing} missing without a gap"
        );
        eprintln!(
            "two racing nodes: {} of {} delivered in order, {} gaps reported",
            seen.len(),
            2 * EACH,
            ea.gap_count(ch)
        );
    })
    .await;
}
