//! Stream positions never claim what history cannot return: an offset given out whose append is
//! still under way is not part of the reported position (issue 12, finding 1), and a publish
//! whose append failed after its offset was given out leaves no hole (finding 4). Both are made
//! deterministic with the crate's test hooks (hold appends, fail appends).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use switchboard_hub::{Broker, HistoryFilter, HistoryResult};
use switchboard_proto::StreamPosition;

const WAIT: Duration = Duration::from_secs(5);
const META_TTL: Duration = Duration::from_secs(3600);

fn offsets(h: &HistoryResult) -> Vec<u64> {
    h.publications.iter().map(|p| p.offset).collect()
}

fn since(position: &StreamPosition) -> HistoryFilter {
    let mut filter = HistoryFilter::default();
    filter.since = Some(position.clone());
    filter
}

fn top_only() -> HistoryFilter {
    let mut filter = HistoryFilter::default();
    filter.limit = Some(0);
    filter
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn position_excludes_an_offset_not_appended_yet() {
    let cleanup = Cleanup::default();
    with_cleanup(&cleanup, async {
        let mut config = test_config(&nats_url(), &unique_prefix("inflight"));
        config.request_timeout = Duration::from_millis(500);
        let broker = connect(config, "inflight", Some(&cleanup)).await;
        let events = Arc::new(Recorder::default());
        broker.start(events.clone());
        let ch = "room";
        let first = broker
            .publish(ch, publication(1), &history_options())
            .await
            .unwrap();

        // A second publish gets offset 2 and stops before its append.
        let hold = broker.hold_appends().await;
        let publisher = broker.clone();
        let second = tokio::spawn(async move {
            publisher
                .publish(ch, publication(2), &history_options())
                .await
        });
        eventually("the publish to get its offset", WAIT, || {
            broker.appends_waiting() == 1
        })
        .await;

        // Reads wait for it (up to request_timeout), then report the position below it: a
        // subscriber takes everything up to the position as delivered, and offset 2 is not
        // readable yet.
        let t = Instant::now();
        let h = broker
            .history(ch, &HistoryFilter::default(), META_TTL)
            .await
            .unwrap();
        assert_eq!(offsets(&h), [1]);
        assert_eq!(h.position, first);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let h = broker.history(ch, &top_only(), META_TTL).await.unwrap();
        assert_eq!(h.position, first);
        // Recovery from 1: nothing missed, position 1 (so the live copy of 2 is delivered).
        let h = broker.history(ch, &since(&first), META_TTL).await.unwrap();
        assert!(h.publications.is_empty());
        assert_eq!(h.position, first);

        // A read under way when the append completes returns it, with the position.
        let reader = broker.clone();
        let read = tokio::spawn(async move {
            reader
                .history(ch, &since(&first_position(&reader, ch).await), META_TTL)
                .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(hold);
        let second = second.await.unwrap().unwrap();
        assert_eq!(second.offset, 2);
        let h = read.await.unwrap().unwrap();
        assert_eq!(offsets(&h), [2]);
        assert_eq!(h.position, second);
        let h = broker.history(ch, &top_only(), META_TTL).await.unwrap();
        assert_eq!(h.position, second);
        // Nothing was lost live either.
        broker.subscribe(ch).await.unwrap();
        let third = broker
            .publish(ch, publication(3), &history_options())
            .await
            .unwrap();
        eventually("the third publication", WAIT, || events.offsets(ch) == [3]).await;
        let h = broker
            .history(ch, &HistoryFilter::default(), META_TTL)
            .await
            .unwrap();
        assert_eq!(offsets(&h), [1, 2, 3]);
        assert_eq!(h.position, third);
    })
    .await;
}

/// Position 1 of `ch` (the first publication), as a client that received it holds it.
async fn first_position(broker: &switchboard_broker_nats::NatsBroker, ch: &str) -> StreamPosition {
    let h = broker
        .history(ch, &HistoryFilter::default(), META_TTL)
        .await
        .unwrap();
    let mut p = h.position;
    p.offset = 1;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_append_leaves_no_hole() {
    let cleanup = Cleanup::default();
    with_cleanup(&cleanup, async {
        let broker = connect(
            test_config(&nats_url(), &unique_prefix("hole")),
            "hole",
            Some(&cleanup),
        )
        .await;
        let events = Arc::new(Recorder::default());
        broker.start(events.clone());
        let ch = "room";
        broker.subscribe(ch).await.unwrap();
        let opts = history_options();
        broker.publish(ch, publication(1), &opts).await.unwrap();
        let second = broker.publish(ch, publication(2), &opts).await.unwrap();

        // The append of the third fails after its offset (3) was given out.
        broker.fail_appends(1);
        let failed = broker.publish(ch, publication(3), &opts).await;
        assert!(failed.is_err(), "{failed:?}");
        // The offset was given back: the next publication takes it.
        let h = broker.history(ch, &top_only(), META_TTL).await.unwrap();
        assert_eq!(h.position, second);
        let next = broker.publish(ch, publication(4), &opts).await.unwrap();
        assert_eq!((next.offset, &next.epoch), (3, &second.epoch));
        eventually("the publications", WAIT, || events.offsets(ch) == [1, 2, 3]).await;
        assert_eq!(events.gap_count(ch), 0);

        // Recovery across the failed publish is complete (the first returned publication
        // follows the client's offset), and quick.
        let mut from = second.clone();
        from.offset = 1;
        let t = Instant::now();
        let h = broker.history(ch, &since(&from), META_TTL).await.unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(offsets(&h), [2, 3]);
        assert_eq!(h.position, next);
        assert_eq!(h.publications[1].data.get(), publication(4).data.get());
    })
    .await;
}
