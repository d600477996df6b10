//! `client.write_delay`: messages to one connection that come faster than the delay go out
//! together in one frame; an isolated message is written at once.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{hub_publish, start, Conn};

#[tokio::test]
async fn bursts_are_coalesced_and_isolated_messages_are_not_delayed() {
    let server = start(|c| c.client.write_delay = Duration::from_millis(200)).await;
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
    let server = start(|c| c.client.write_delay = Duration::from_millis(50)).await;
    let mut conn = Conn::connected(server.addr()).await;
    for n in 0..5 {
        conn.subscribe(&format!("ch{n}")).await;
    }
    conn.assert_alive().await;
}
