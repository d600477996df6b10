//! Limits and timers against a real server: the connection limit, the handshake timeout,
//! heartbeats and the slow-consumer disconnect.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{eventually, metric_value, metrics, start, Conn, Event, TIMEOUT};

#[tokio::test]
async fn connection_limit_closes_extra_connections_with_3504() {
    let server = start(|c| c.client.max_connections = 2).await;
    let addr = server.addr();
    let mut first = Conn::connected(addr).await;
    let second = Conn::connected(addr).await;

    let mut third = Conn::open(addr).await;
    assert_eq!(third.expect_close(3504, TIMEOUT).await, "connection limit");
    // The limit counts connections that have not sent connect yet as well.
    first.assert_alive().await;

    // When one leaves, there is room again.
    drop(second);
    let room = eventually(TIMEOUT, || async {
        server.hub().metrics().connections() < 2
    })
    .await;
    assert!(room, "the closed connection is not released");
    let mut fourth = Conn::connected(addr).await;
    fourth.assert_alive().await;
}

#[tokio::test]
async fn client_that_never_connects_is_closed_with_3502() {
    let server = start(|c| c.client.handshake_timeout = Duration::from_secs(1)).await;
    let started = Instant::now();
    let mut conn = Conn::open(server.addr()).await;
    assert_eq!(conn.expect_close(3502, TIMEOUT).await, "stale");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(4),
        "closed too late: {elapsed:?}"
    );

    // A client that connects in time is not affected by the handshake timeout.
    let mut conn = Conn::connected(server.addr()).await;
    conn.expect_silence(Duration::from_millis(1500)).await;
    conn.assert_alive().await;
}

fn with_fast_pings(c: &mut switchboard_http::config::Config) {
    c.client.ping_interval = Duration::from_secs(1);
    c.client.pong_timeout = Duration::from_millis(500);
}

#[tokio::test]
async fn answered_pings_keep_the_connection_alive() {
    let server = start(with_fast_pings).await;
    let mut conn = Conn::open(server.addr()).await;
    let result = conn.connect().await;
    assert_eq!(result["ping"], 1, "{result}");
    assert_eq!(result["pong"], true, "{result}");

    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(3500) {
        match conn.next_event(Duration::from_secs(3)).await {
            Event::Json(v) if v == json!({}) => {
                pings += 1;
                conn.send_text("{}").await;
            }
            other => panic!("expected a ping, got {other:?}"),
        }
    }
    assert!(pings >= 3, "only {pings} pings in {:?}", started.elapsed());
    // Still open after more than 3 s of ping/pong.
    conn.assert_alive().await;
}

#[tokio::test]
async fn unanswered_ping_closes_with_3012() {
    let server = start(with_fast_pings).await;
    let mut conn = Conn::connected(server.addr()).await;
    let started = Instant::now();
    match conn.next_event(Duration::from_secs(3)).await {
        Event::Json(v) => assert_eq!(v, json!({}), "expected a ping"),
        other => panic!("expected a ping, got {other:?}"),
    }
    let pinged = started.elapsed();
    assert_eq!(
        conn.expect_close(3012, Duration::from_secs(3)).await,
        "no pong"
    );
    let closed = started.elapsed();
    assert!(
        closed - pinged >= Duration::from_millis(400),
        "closed {:?} after the ping, before the pong timeout",
        closed - pinged
    );
    let disconnects = metric_value(
        &metrics(server.addr()).await,
        "switchboard_disconnects_total{code=\"3012\",reason=\"no pong\"}",
    );
    assert_eq!(disconnects, 1.0);
}

#[tokio::test]
async fn a_client_pong_without_ping_is_harmless() {
    let server = start(with_fast_pings).await;
    let mut conn = Conn::connected(server.addr()).await;
    // Unsolicited pongs before and between pings.
    conn.send_text("{}").await;
    conn.send_text("{}\n{}").await;
    conn.assert_alive().await;
}

/// A subscriber that stops reading is disconnected with 3008 once its queue overflows, and does
/// not slow down or break delivery to the others.
///
/// The kernel's socket buffers absorb the first megabytes a non-reading client is sent (the
/// server's send buffer grows up to `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default), so the
/// publisher sends at least [`MIN_MESSAGES`] publications of 1 KiB and goes on until the hub
/// reports the slow disconnect (at most [`MAX_MESSAGES`]).
#[tokio::test]
async fn slow_consumer_is_disconnected_with_3008() {
    const MIN_MESSAGES: usize = 2000;
    const MAX_MESSAGES: usize = 40_000;
    const BATCH: usize = 50;
    let server = start(|c| {
        c.client.max_queue_bytes = 64 * 1024;
    })
    .await;
    let addr = server.addr();
    let mut slow = Conn::connected_small_rcvbuf(addr, 4096).await;
    slow.subscribe("firehose").await;
    let mut healthy = Conn::connected(addr).await;
    healthy.subscribe("firehose").await;
    let mut publisher = Conn::connected(addr).await;

    // The healthy subscriber reads everything concurrently, until the end marker.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            let (channel, publication) = healthy.next_publication().await;
            assert_eq!(channel, "firehose");
            if publication["data"]["end"] == true {
                break;
            }
            got.push(publication["data"]["n"].as_u64().expect("n"));
        }
        (healthy, got)
    });

    let padding = "p".repeat(1024);
    let hub = server.hub().clone();
    let slow_disconnects = || {
        hub.metrics()
            .disconnects_with(switchboard_proto::DisconnectCode::SLOW)
    };
    let mut published = 0;
    let started = Instant::now();
    while published < MIN_MESSAGES || (slow_disconnects() == 0 && published < MAX_MESSAGES) {
        let commands: Vec<_> = (published..published + BATCH)
            .map(|n| json!({"publish": {"channel": "firehose", "data": {"n": n, "pad": padding}}}))
            .collect();
        let ids = publisher.send_batch(&commands).await;
        for id in ids {
            let reply = publisher.reply(id).await;
            assert!(reply.get("publish").is_some(), "{reply}");
        }
        published += BATCH;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "publishing takes too long: {published} in {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        slow_disconnects(),
        1,
        "no slow disconnect after {published} publications of 1 KiB"
    );
    // The slow connection is gone from the node (it was closed, not left hanging with a full
    // socket): the healthy subscriber and the publisher remain.
    let deadline = Instant::now() + Duration::from_secs(5);
    while hub.metrics().connections() != 2 {
        assert!(
            Instant::now() < deadline,
            "the slow connection is still open ({} connections)",
            hub.metrics().connections()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publisher.publish("firehose", json!({"end": true})).await;

    let (mut healthy, got) = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("healthy subscriber did not get every publication in time")
        .expect("reader task");
    let want: Vec<u64> = (0..published as u64).collect();
    assert_eq!(
        got.len(),
        want.len(),
        "healthy subscriber missed publications"
    );
    assert!(
        got == want,
        "healthy subscriber got publications out of order"
    );
    healthy.assert_alive().await;

    let text = metrics(addr).await;
    assert_eq!(
        metric_value(&text, "switchboard_slow_disconnects_total"),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "switchboard_disconnects_total{code=\"3008\",reason=\"slow\"}"
        ),
        1.0
    );

    // Now read the slow one: the publications it got, in order and without gaps, then the
    // close frame 3008 (or the end of the stream, when the server gave up writing the close
    // frame to a full socket).
    let mut received = 0u64;
    let ending = loop {
        match slow.next_event(Duration::from_secs(10)).await {
            Event::Json(v) => {
                if let Some(n) = v["push"]["pub"]["data"]["n"].as_u64() {
                    assert_eq!(n, received, "slow subscriber's publications out of order");
                    received += 1;
                }
            }
            other => break other,
        }
    };
    assert!(
        (received as usize) < published,
        "slow subscriber got every publication: it was not slow"
    );
    match ending {
        Event::Close(code, reason) => {
            assert_eq!(code, 3008, "reason {reason:?}");
            assert_eq!(reason, "slow");
        }
        Event::Ended(_) => {}
        Event::Json(_) => unreachable!(),
    }
    let gone = eventually(TIMEOUT, || async {
        server.hub().subscriber_count("firehose") == 1
    })
    .await;
    assert!(gone, "the slow subscriber is still subscribed");
}
