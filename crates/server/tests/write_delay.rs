//! `client.write_delay`: messages to one connection that come faster than the delay go out
//! together in one frame; an isolated message is written at once.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{hub_publish, start, Conn};

#[tokio::test]
async fn bursts_are_coalesced_and_isolated_messages_are_not_delayed() {
    let server = start(|c| c.client.write_delay = Duration::from_millis(200).into()).await;
    let mut sub = Conn::connected(server.addr()).await;
    sub.subscribe("coalesce").await;

    // First message after a quiet period (longer than the delay since the subscribe reply):
    // written at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    hub_publish(&server, "coalesce", json!(0)).await;
    let frame = sub
        .next_frame(Duration::from_secs(2))
        .await
        .expect("a frame");
    assert_eq!(frame.len(), 1);
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );

    // A burst right after it waits for the rest of the delay and arrives in one frame, in order.
    for n in 1..=20 {
        hub_publish(&server, "coalesce", json!(n)).await;
    }
    let frame = sub
        .next_frame(Duration::from_secs(2))
        .await
        .expect("a frame");
    let data: Vec<i64> = frame
        .iter()
        .map(|m| m["push"]["pub"]["data"].as_i64().unwrap())
        .collect();
    assert_eq!(data, (1..=20).collect::<Vec<i64>>());
}

#[tokio::test]
async fn replies_and_pings_still_flow_with_a_delay() {
    let server = start(|c| c.client.write_delay = Duration::from_millis(50).into()).await;
    let mut conn = Conn::connected(server.addr()).await;
    for n in 0..5 {
        conn.subscribe(&format!("ch{n}")).await;
    }
    conn.assert_alive().await;
}

#[tokio::test]
async fn the_default_adapts_and_isolated_messages_are_written_at_once() {
    let server = start(|_| {}).await;
    let pacer = server.hub().pacer().clone();
    assert!(pacer.is_adaptive());
    assert!(pacer.delay() <= switchboard_hub::pacer::MAX_DELAY);
    let mut sub = Conn::connected(server.addr()).await;
    sub.subscribe("calm").await;
    // Messages further apart than the longest adaptive delay are each written at once, in a
    // frame of their own, whatever the node's load (the delay only holds a connection that
    // wrote less than the delay ago).
    for n in 0..5 {
        tokio::time::sleep(switchboard_hub::pacer::MAX_DELAY + Duration::from_millis(10)).await;
        hub_publish(&server, "calm", json!(n)).await;
        let frame = sub
            .next_frame(Duration::from_secs(2))
            .await
            .expect("a frame");
        assert_eq!(frame.len(), 1);
        assert_eq!(frame[0]["push"]["pub"]["data"], json!(n));
    }
}

#[tokio::test]
async fn write_delay_is_auto_or_a_duration_in_the_configuration() {
    use switchboard_hub::WriteDelay;
    let parse = |v: &str| {
        support::config_from_toml(&format!("[client]\nwrite_delay = \"{v}\"\n"))
            .client
            .write_delay
    };
    assert_eq!(parse("auto"), WriteDelay::Auto);
    assert_eq!(parse("5ms"), WriteDelay::Fixed(Duration::from_millis(5)));
    assert_eq!(parse("0s"), WriteDelay::Fixed(Duration::ZERO));
    let server = start(|c| c.client.write_delay = Duration::from_millis(5).into()).await;
    assert!(!server.hub().pacer().is_adaptive());
    assert_eq!(server.hub().pacer().delay(), Duration::from_millis(5));
}

/// A hold ends as soon as a write's worth is queued (a quarter of the queue's limit, at most
/// 16 KiB): a burst is not held for the whole delay, and holding never pushes a reading client
/// into the slow-consumer limit.
#[tokio::test]
async fn a_burst_ends_the_hold_before_the_queue_fills() {
    let server = start(|c| {
        c.client.write_delay = Duration::from_secs(1).into();
        c.client.max_queue_bytes = 64 * 1024;
    })
    .await;
    let mut sub = Conn::connected(server.addr()).await;
    sub.subscribe("burst").await;
    let pad = "p".repeat(1024);
    // The subscribe reply was the last write, so the first of these waits for the delay; but
    // 200 x 1 KiB within it, three times the queue's limit, would overflow the queue (3008) if
    // the hold lasted the whole second. Each write's worth is written at once instead (only the
    // burst's tail waits for the rest of the delay).
    for n in 0..200 {
        hub_publish(&server, "burst", json!({"n": n, "pad": pad})).await;
        // The server runs on this test's thread: let the connection's task run.
        tokio::task::yield_now().await;
    }
    let mut got = Vec::new();
    while got.len() < 200 {
        let frame = sub
            .next_frame(Duration::from_secs(10))
            .await
            .expect("frames while the delay holds");
        for m in frame {
            got.push(m["push"]["pub"]["data"]["n"].as_u64().unwrap());
        }
    }
    assert_eq!(got, (0..200).collect::<Vec<u64>>());
    let slow = server
        .hub()
        .metrics()
        .disconnects_with(switchboard_proto::DisconnectCode::SLOW);
    assert_eq!(slow, 0);
}
