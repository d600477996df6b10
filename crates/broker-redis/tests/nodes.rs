//! Two brokers ("nodes") on one Redis behave as one.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::value::RawValue;
use support::{eventually, started, Recorder, LOCAL_REDIS};
use switchboard_hub::{Broker, HistoryFilter, PresenceStore, PublishOptions};
use switchboard_proto::{ClientInfo, Publication, StreamPosition};

const WAIT: Duration = Duration::from_secs(5);

fn publication(n: usize) -> Publication {
    Publication {
        data: RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap(),
        info: Some(info("publisher", "c-pub")),
        offset: 0,
        tags: HashMap::from([("t".into(), n.to_string())]),
    }
}

fn info(user: &str, client: &str) -> ClientInfo {
    ClientInfo {
        user: user.into(),
        client: client.into(),
        conn_info: Some(RawValue::from_string("{\"name\":\"x\"}".into()).unwrap()),
        chan_info: None,
    }
}

fn history_options() -> PublishOptions {
    let mut o = PublishOptions::default();
    o.history_size = 100;
    o.history_ttl = Duration::from_secs(60);
    o.history_meta_ttl = Duration::from_secs(600);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_publications_control_presence_and_history() {
    let prefix = support::unique_prefix();
    let config = support::config(&[LOCAL_REDIS.to_string()], &prefix);
    let (a, events_a) = started(config.clone(), "node-a").await;
    let (b, events_b) = started(config, "node-b").await;
    let ch = "chat:room";

    // A publication made on A reaches B (which subscribed), in order, with offsets and data.
    b.subscribe(ch).await.unwrap();
    let opts = history_options();
    let mut last = StreamPosition::default();
    for n in 1..=5 {
        last = a.publish(ch, publication(n), &opts).await.unwrap();
    }
    eventually("5 publications on B", WAIT, || {
        events_b.publications(ch).len() == 5
    })
    .await;
    let got = events_b.publications(ch);
    assert_eq!(
        got.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(got[0].data.get(), "{\"n\":1}");
    assert_eq!(got[0].info.as_ref().unwrap().client, "c-pub");
    assert_eq!(
        got[0]
            .info
            .as_ref()
            .unwrap()
            .conn_info
            .as_ref()
            .unwrap()
            .get(),
        "{\"name\":\"x\"}"
    );
    assert_eq!(got[4].tags["t"], "5");
    // A did not subscribe, so it received nothing.
    assert!(events_a.publications(ch).is_empty());

    // History and positions are shared: B reads what A wrote, and recovers from A's position.
    let meta = Duration::from_secs(600);
    let from_b = b
        .history(ch, &HistoryFilter::default(), meta)
        .await
        .unwrap();
    assert_eq!(from_b.position, last);
    assert_eq!(from_b.publications.len(), 5);
    let mut since = HistoryFilter::default();
    since.since = Some(StreamPosition {
        offset: 3,
        epoch: last.epoch.clone(),
    });
    let recovered = b.history(ch, &since, meta).await.unwrap();
    assert_eq!(
        recovered
            .publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        vec![4, 5]
    );
    // B publishes next: the offset continues from A's.
    let next = b.publish(ch, publication(6), &opts).await.unwrap();
    assert_eq!(next.offset, 6);
    assert_eq!(next.epoch, last.epoch);

    // Joins and leaves from A reach B.
    a.publish_join(ch, &info("u1", "c1")).await.unwrap();
    a.publish_leave(ch, &info("u1", "c1")).await.unwrap();
    eventually("join and leave on B", WAIT, || {
        events_b.joins(ch) == 1 && events_b.leaves(ch) == 1
    })
    .await;

    // Control messages reach both nodes, the sender included.
    a.publish_control(b"{\"type\":\"hello\"}").await.unwrap();
    let got_both = |e: &Recorder| e.control().iter().any(|m| m == b"{\"type\":\"hello\"}");
    eventually("control on A and B", WAIT, || {
        got_both(&events_a) && got_both(&events_b)
    })
    .await;

    // Presence written by A is read by B.
    a.add_presence(ch, &info("u1", "c1"), Duration::from_secs(60))
        .await
        .unwrap();
    b.add_presence(ch, &info("u2", "c2"), Duration::from_secs(60))
        .await
        .unwrap();
    a.add_presence(ch, &info("u2", "c3"), Duration::from_secs(60))
        .await
        .unwrap();
    let p = b.presence(ch).await.unwrap();
    assert_eq!(p.len(), 3);
    assert_eq!(p["c1"].user, "u1");
    assert_eq!(
        p["c1"].conn_info.as_ref().unwrap().get(),
        "{\"name\":\"x\"}"
    );
    let stats = a.presence_stats(ch).await.unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (3, 2));
    b.remove_presence(ch, "c1").await.unwrap();
    assert_eq!(a.presence(ch).await.unwrap().len(), 2);

    // After B unsubscribes, it stops receiving. B's one pub/sub connection delivers in the
    // order Redis published, so once a later publication of another channel has arrived,
    // publication 7 would have arrived too.
    let barrier = "chat:barrier";
    b.subscribe(barrier).await.unwrap();
    b.unsubscribe(ch).await.unwrap();
    a.publish(ch, publication(7), &PublishOptions::default())
        .await
        .unwrap();
    a.publish(barrier, publication(8), &PublishOptions::default())
        .await
        .unwrap();
    eventually("the later publication on B", WAIT, || {
        events_b.publications(barrier).len() == 1
    })
    .await;
    assert_eq!(events_b.publications(ch).len(), 6);
    b.unsubscribe(barrier).await.unwrap();
    assert!(b.subscribed_channels().await.is_empty());

    support::cleanup(LOCAL_REDIS, &prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_and_nothing_is_left_without_ttl() {
    let prefix = support::unique_prefix();
    let config = support::config(&[LOCAL_REDIS.to_string()], &prefix);
    let (a, _events) = started(config, "node-a").await;
    let mut opts = history_options();
    opts.idempotency_key = Some("k".into());
    opts.idempotent_result_ttl = Duration::from_secs(30);
    a.publish("x", publication(1), &opts).await.unwrap();
    a.add_presence("x", &info("u", "c"), Duration::from_secs(30))
        .await
        .unwrap();
    a.history(
        "never-published",
        &HistoryFilter::default(),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    // Every key the broker creates has an expiry, so a dead deployment leaves nothing behind.
    let client = redis::Client::open(LOCAL_REDIS).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys = support::keys(LOCAL_REDIS, &prefix);
    assert_eq!(keys.len(), 6, "{keys:?}");
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).unwrap();
        assert!(ttl > 0, "{key} has no expiry");
    }
    support::cleanup(LOCAL_REDIS, &prefix);
}
