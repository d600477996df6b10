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
async fn the_default_adapts_and_a_calm_node_writes_at_once() {
    let server = start(|_| {}).await;
    let pacer = server.hub().pacer().clone();
    assert!(pacer.is_adaptive());
    let mut sub = Conn::connected(server.addr()).await;
    sub.subscribe("calm").await;
    // A node that keeps up does not delay writes: every message of a slow stream arrives in
    // its own frame, in order.
    for n in 0..5 {
        assert_eq!(pacer.delay(), Duration::ZERO);
        hub_publish(&server, "calm", json!(n)).await;
        let frame = sub
            .next_frame(Duration::from_secs(2))
            .await
            .expect("a frame");
        assert_eq!(frame.len(), 1);
        assert_eq!(frame[0]["push"]["pub"]["data"], json!(n));
        tokio::time::sleep(Duration::from_millis(20)).await;
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
