//! A retry with the same idempotency key after a publish whose outcome is unknown (its history
//! append was sent without an answer) never publishes twice (issue 12, harness problem 4): the
//! retry settles the first attempt at its offset. Made deterministic with the crate's test hooks
//! (an append stored with its answer lost, an append dropped unanswered); a real freeze of NATS
//! is in `failure.rs`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use switchboard_hub::{Broker, BrokerError, HistoryFilter, PublishOptions};
use switchboard_proto::StreamPosition;

const META_TTL: Duration = Duration::from_secs(3600);

fn keyed(key: &str) -> PublishOptions {
    let mut options = history_options();
    options.idempotency_key = Some(key.to_string());
    options.idempotent_result_ttl = Duration::from_secs(60);
    options
}

/// `(offset, n)` of every publication in the channel's history, `n` being the number
/// `publication(n)` was made with.
async fn stored(broker: &switchboard_broker_nats::NatsBroker, ch: &str) -> Vec<(u64, String)> {
    let h = broker
        .history(ch, &HistoryFilter::default(), META_TTL)
        .await
        .unwrap();
    h.publications
        .iter()
        .map(|p| (p.offset, p.data.get().to_string()))
        .collect()
}

fn data(n: u64) -> String {
    publication(n).data.get().to_string()
}

fn outcome_unknown(r: &Result<StreamPosition, BrokerError>) -> bool {
    matches!(r, Err(BrokerError::OutcomeUnknown(_)))
}

/// Request timeout of these tests: an offset's pending deadline is 4 of them plus 1 s (1.8 s).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(200);

async fn broker(what: &str, cleanup: &Cleanup) -> switchboard_broker_nats::NatsBroker {
    node(&unique_prefix(what), what, Some(cleanup)).await
}

/// A node of the cluster whose storage is under `prefix`.
async fn node(
    prefix: &str,
    name: &str,
    cleanup: Option<&Cleanup>,
) -> switchboard_broker_nats::NatsBroker {
    let mut config = test_config(&nats_url(), prefix);
    config.request_timeout = REQUEST_TIMEOUT;
    let broker = connect(config, name, cleanup).await;
    broker.start(Arc::new(Recorder::default()));
    broker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_a_lost_answer_is_not_published_twice() {
    let cleanup = Cleanup::default();
    with_cleanup(&cleanup, async {
        let broker = broker("idem-lost-answer", &cleanup).await;
        let ch = "room";
        let first = broker
            .publish(ch, publication(1), &history_options())
            .await
            .unwrap();

        // Stored at offset 2, but the publisher never hears it.
        broker.lose_append_answers(1);
        let r = broker.publish(ch, publication(2), &keyed("k2")).await;
        assert!(outcome_unknown(&r), "{r:?}");
        // Another publish meanwhile does not take the reserved offset.
        let third = broker
            .publish(ch, publication(3), &history_options())
            .await
            .unwrap();
        assert_eq!(third.offset, 3);

        // The retry settles the attempt: offset 2, not a second copy.
        let retry = broker
            .publish(ch, publication(2), &keyed("k2"))
            .await
            .unwrap();
        assert_eq!((retry.offset, &retry.epoch), (2, &first.epoch));
        let again = broker
            .publish(ch, publication(2), &keyed("k2"))
            .await
            .unwrap();
        assert_eq!(again, retry);
        assert_eq!(
            stored(&broker, ch).await,
            [(1, data(1)), (2, data(2)), (3, data(3))]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_an_append_lost_on_the_way_stores_it_once_at_its_offset() {
    let cleanup = Cleanup::default();
    with_cleanup(&cleanup, async {
        let broker = broker("idem-dropped", &cleanup).await;
        let ch = "room";
        broker
            .publish(ch, publication(1), &history_options())
            .await
            .unwrap();

        broker.drop_appends_unanswered(1);
        let r = broker.publish(ch, publication(2), &keyed("k2")).await;
        assert!(outcome_unknown(&r), "{r:?}");
        // Readers wait for the reserved offset: the position does not include it yet.
        let mut top = HistoryFilter::default();
        top.limit = Some(0);
        let h = broker.history(ch, &top, META_TTL).await.unwrap();
        assert_eq!(h.position.offset, 1);

        let retry = broker
            .publish(ch, publication(2), &keyed("k2"))
            .await
            .unwrap();
        assert_eq!(retry.offset, 2);
        let next = broker
            .publish(ch, publication(3), &history_options())
            .await
            .unwrap();
        assert_eq!(next.offset, 3);
        assert_eq!(
            stored(&broker, ch).await,
            [(1, data(1)), (2, data(2)), (3, data(3))]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_the_deadline_answers_a_stored_attempt() {
    let cleanup = Cleanup::default();
    with_cleanup(&cleanup, async {
        let broker = broker("idem-late-stored", &cleanup).await;
        let ch = "room";
        broker.lose_append_answers(1);
        let r = broker.publish(ch, publication(1), &keyed("k1")).await;
        assert!(outcome_unknown(&r), "{r:?}");
        // Past the offset's pending deadline (1.8 s).
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let retry = broker
            .publish(ch, publication(1), &keyed("k1"))
            .await
            .unwrap();
        assert_eq!(retry.offset, 1);
        assert_eq!(stored(&broker, ch).await, [(1, data(1))]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_the_deadline_publishes_anew_when_nothing_was_stored() {
    let cleanup = Cleanup::default();
    with_cleanup(&cleanup, async {
        let broker = broker("idem-late-missing", &cleanup).await;
        let ch = "room";
        broker
            .publish(ch, publication(1), &history_options())
            .await
            .unwrap();
        broker.drop_appends_unanswered(1);
        let r = broker.publish(ch, publication(2), &keyed("k2")).await;
        assert!(outcome_unknown(&r), "{r:?}");
        tokio::time::sleep(Duration::from_millis(2000)).await;
        // Readers count offset 2 as a hole now; the retry publishes after it.
        let retry = broker
            .publish(ch, publication(2), &keyed("k2"))
            .await
            .unwrap();
        assert_eq!(retry.offset, 3);
        let again = broker
            .publish(ch, publication(2), &keyed("k2"))
            .await
            .unwrap();
        assert_eq!(again, retry);
        assert_eq!(stored(&broker, ch).await, [(1, data(1)), (3, data(2))]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_settle_once() {
    let cleanup = Cleanup::default();
    with_cleanup(&cleanup, async {
        let prefix = unique_prefix("idem-concurrent");
        let broker = node(&prefix, "idem-concurrent-a", Some(&cleanup)).await;
        let other = node(&prefix, "idem-concurrent-b", None).await;
        let ch = "room";
        broker.lose_append_answers(1);
        let r = broker.publish(ch, publication(1), &keyed("k1")).await;
        assert!(outcome_unknown(&r), "{r:?}");
        let options = keyed("k1");
        let (a, b) = tokio::join!(
            broker.publish(ch, publication(1), &options),
            other.publish(ch, publication(1), &options),
        );
        // Each retry either settles it or answers the settled result; an "in progress" refusal
        // is allowed for the loser, never a second copy.
        for r in [&a, &b] {
            match r {
                Ok(p) => assert_eq!(p.offset, 1),
                Err(BrokerError::Unavailable(reason)) => {
                    assert!(reason.contains("in progress"), "{reason}")
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!(a.is_ok() || b.is_ok());
        assert_eq!(stored(&broker, ch).await, [(1, data(1))]);
    })
    .await;
}
