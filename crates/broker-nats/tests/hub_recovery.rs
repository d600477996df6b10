//! Issue 12, finding 1, end to end: a hub over the NATS broker, a client resubscribing with
//! recovery while a publication is between its offset allocation and its append (held by the
//! crate's test hook). Whether the append completes during the subscribe or long after it, the
//! client gets the publication exactly once: in the reply or as a push, never claimed by the
//! reply's position without being delivered.

mod support;

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use support::*;
use switchboard_hub::{Client, Drained, Hub, HubConfig, TransportInfo};

const TRANSPORT: TransportInfo = TransportInfo::new("test", true);
const WAIT: Duration = Duration::from_secs(5);

fn hub(broker: &switchboard_broker_nats::NatsBroker) -> Hub {
    let mut config = HubConfig::default();
    config.client.allow_anonymous = true;
    config.channel.allow_unknown_namespaces = true;
    let d = &mut config.channel.default;
    d.allow_subscribe_for_anonymous = true;
    d.allow_subscribe_for_client = true;
    d.history_size = 10;
    d.history_ttl = Duration::from_secs(60);
    Hub::new(config, Arc::new(broker.clone()), "hub-recovery".into())
}

async fn request(client: &mut Client, id: u32, mut command: Value) {
    command["id"] = json!(id);
    client
        .handle_frame(command.to_string().as_bytes(), Instant::now())
        .await
        .unwrap_or_else(|code| panic!("{command} closed the session: {code}"));
}

/// Everything queued for the client, one JSON value per message.
fn take(client: &Client) -> Vec<Value> {
    let mut batch: Vec<Bytes> = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match client
            .outbound()
            .poll_drain(&mut cx, &mut batch, 1024, false)
        {
            Poll::Ready(Drained::Items) => {
                for item in batch.drain(..) {
                    let text = std::str::from_utf8(&item).expect("utf-8");
                    out.extend(text.split('\n').map(|l| serde_json::from_str(l).unwrap()));
                }
            }
            Poll::Ready(Drained::Closed(code)) => panic!("queue closed with {code}"),
            _ => return out,
        }
    }
}

fn data(n: u64) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap()
}

/// Resubscribes with recovery from offset 0 (so publication 1 is recovered, and the reply is
/// complete by the hub's rule: the first publication follows the client's offset) while publication 2 waits in front of its append,
/// which is released after `release_after`; returns the reply and the offsets delivered (reply
/// then pushes).
async fn resubscribe_during_publish(release_after: Duration) -> (Value, Vec<u64>) {
    let cleanup = Cleanup::default();
    let mut outcome = None;
    with_cleanup(&cleanup, async {
        let mut config = test_config(&nats_url(), &unique_prefix("hubrec"));
        config.request_timeout = Duration::from_millis(500);
        let broker = connect(config, "hub-recovery", Some(&cleanup)).await;
        let hub = hub(&broker);
        let first = hub.publish("h", data(1), None).await.unwrap();
        assert_eq!(first.offset, 1);

        let hold = broker.hold_appends().await;
        let publisher = hub.clone();
        let second = tokio::spawn(async move { publisher.publish("h", data(2), None).await });
        eventually("publication 2 to get its offset", WAIT, || {
            broker.appends_waiting() == 1
        })
        .await;

        let mut client = hub.accept(TRANSPORT).expect("accepted");
        request(&mut client, 1, json!({"connect": {}})).await;
        take(&client);
        let subscribe = json!({"subscribe": {
            "channel": "h", "recover": true, "offset": 0, "epoch": first.epoch
        }});
        let subscribing = tokio::spawn(async move {
            request(&mut client, 2, subscribe).await;
            client
        });
        tokio::time::sleep(release_after).await;
        drop(hold);
        let client = subscribing.await.unwrap();
        assert_eq!(second.await.unwrap().unwrap().offset, 2);

        let mut messages = Vec::new();
        let deadline = Instant::now() + WAIT;
        let mut offsets = Vec::new();
        loop {
            messages.extend(take(&client));
            offsets.clear();
            for m in &messages {
                if m["id"] == 2 {
                    for p in m["subscribe"]["publications"]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        offsets.push(p["offset"].as_u64().unwrap());
                    }
                } else if let Some(offset) = m["push"]["pub"]["offset"].as_u64() {
                    offsets.push(offset);
                }
            }
            if offsets.contains(&2) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A third publication: nothing of the second arrives late either.
        hub.publish("h", data(3), None).await.unwrap();
        eventually("publication 3", WAIT, || {
            messages.extend(take(&client));
            messages
                .iter()
                .any(|m| m["push"]["pub"]["offset"].as_u64() == Some(3))
        })
        .await;
        offsets.push(3);
        let reply = messages
            .iter()
            .find(|m| m["id"] == 2)
            .expect("subscribe reply")
            .clone();
        outcome = Some((reply, offsets));
    })
    .await;
    outcome.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_completing_during_the_subscribe_is_in_the_reply_or_pushed() {
    let (reply, offsets) = resubscribe_during_publish(Duration::from_millis(100)).await;
    assert_eq!(reply["subscribe"]["recovered"], true, "{reply}");
    assert_eq!(offsets, [1, 2, 3], "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_completing_after_the_subscribe_is_pushed() {
    // Longer than the broker waits for a pending offset (request_timeout, 500 ms): the reply
    // comes first, with the position below the offset being appended, and the publication is
    // pushed when its append and publish complete.
    let (reply, offsets) = resubscribe_during_publish(Duration::from_millis(1200)).await;
    assert_eq!(reply["subscribe"]["recovered"], true, "{reply}");
    assert_eq!(reply["subscribe"]["offset"].as_u64(), Some(1), "{reply}");
    assert_eq!(offsets, [1, 2, 3], "{reply}");
}
