//! A command that waits (here on a slow subscribe proxy) must not stop its connection: while it
//! waits, publications of the connection's other channels keep arriving, its queue keeps being
//! written (so a small `max_queue_bytes` does not close it with 3008), and commands still take
//! effect in the order they were sent.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{config_from_toml, hub_publish, start_toml, Answer, Backend, Conn, Event, TIMEOUT};
use switchboard_http::Server;

/// How long the subscribe proxy takes to answer.
const PROXY_DELAY: Duration = Duration::from_millis(900);
/// Publications made while the subscribe waits, one every [`PACE`].
const PUBLICATIONS: usize = 12;
const PACE: Duration = Duration::from_millis(50);
/// Bytes of data per publication: together more than the queue limit below, so a connection
/// that stopped writing while it waits would be closed with 3008 "slow".
const PAYLOAD: usize = 1024;
const MAX_QUEUE_BYTES: usize = 8192;
/// The issue's bound on delivery while another command waits.
const MAX_LATENCY: Duration = Duration::from_millis(50);

fn config(backend: &str) -> String {
    format!(
        r#"
mode = "development"
[client]
max_queue_bytes = {MAX_QUEUE_BYTES}
max_message_size = 4096
[proxy]
subscribe_endpoint = "{backend}/subscribe"
timeout = "3s"
[[channel.namespaces]]
name = "slow"
proxy_subscribe = true
allow_publish_for_subscriber = true
[[channel.namespaces]]
name = "open"
"#
    )
}

/// The next message that is not a server ping.
async fn next_message(conn: &mut Conn) -> Value {
    loop {
        match conn.next_event(TIMEOUT).await {
            Event::Json(v) if v == json!({}) => continue,
            Event::Json(v) => return v,
            other => panic!("connection ended while a command waited: {other:?}"),
        }
    }
}

#[tokio::test]
async fn publications_flow_while_a_subscribe_waits_on_its_proxy() {
    let backend = Backend::start(|r| match r.path.as_str() {
        "/subscribe" => Answer::slow(json!({"result": {}}), PROXY_DELAY),
        _ => Answer::json(json!({"result": {}})),
    })
    .await;
    let server = start_toml(&config(&backend.url(""))).await;
    let mut conn = Conn::open(server.addr()).await;
    conn.connect().await;
    conn.subscribe("open:feed").await;

    // subscribe (waits on the proxy), then publish into the channel it subscribes: the publish
    // must be handled after the subscribe, so it succeeds.
    let sent = Instant::now();
    let ids = conn
        .send_batch(&[
            json!({"subscribe": {"channel": "slow:room"}}),
            json!({"publish": {"channel": "slow:room", "data": {"after": "subscribe"}}}),
        ])
        .await;
    let filler = "x".repeat(PAYLOAD);
    let mut latencies = Vec::new();
    for n in 0..PUBLICATIONS {
        let published = Instant::now();
        hub_publish(&server, "open:feed", json!({"n": n, "filler": filler})).await;
        let push = next_message(&mut conn).await;
        latencies.push(published.elapsed());
        assert_eq!(push["push"]["channel"], "open:feed", "{push}");
        assert_eq!(push["push"]["pub"]["data"]["n"], n, "{push}");
        tokio::time::sleep(PACE).await;
    }
    let waited = sent.elapsed();
    assert!(
        waited < PROXY_DELAY,
        "the publications were made within the proxy's delay ({waited:?})"
    );

    // Then the subscribe's reply, and the publish's, in command order.
    let reply = next_message(&mut conn).await;
    assert_eq!(reply["id"], ids[0], "{reply}");
    assert!(reply.get("subscribe").is_some(), "{reply}");
    assert!(
        sent.elapsed() >= PROXY_DELAY - Duration::from_millis(50),
        "the subscribe waited for its proxy ({:?})",
        sent.elapsed()
    );
    let mut rest = vec![next_message(&mut conn).await, next_message(&mut conn).await];
    rest.sort_by_key(|v| v.get("id").is_none());
    assert_eq!(rest[0]["id"], ids[1], "{rest:?}");
    assert!(
        rest[0].get("error").is_none(),
        "publish after subscribe: {rest:?}"
    );
    assert_eq!(
        rest[1]["push"]["pub"]["data"],
        json!({"after": "subscribe"})
    );

    latencies.sort();
    let max = *latencies.last().expect("publications");
    println!(
        "while a subscribe waited {PROXY_DELAY:?}: {PUBLICATIONS} publications, latency median {:?}, max {max:?}",
        latencies[latencies.len() / 2]
    );
    assert!(max <= MAX_LATENCY, "latencies {latencies:?}");
}

#[tokio::test]
async fn server_pings_continue_after_a_slow_command() {
    let backend = Backend::start(|r| match r.path.as_str() {
        "/subscribe" => Answer::slow(json!({"result": {}}), PROXY_DELAY),
        _ => Answer::json(json!({"result": {}})),
    })
    .await;
    let mut config = config_from_toml(&config(&backend.url("")));
    config.client.ping_interval = Duration::from_secs(1);
    config.client.pong_timeout = Duration::from_millis(500);
    let server = Server::start(config).await.expect("server starts");
    let mut conn = Conn::open(server.addr()).await;
    conn.connect().await;
    let id = conn.id();
    conn.send_text(json!({"id": id, "subscribe": {"channel": "slow:room"}}).to_string())
        .await;
    // Answer every ping; the connection must live through the wait and keep being pinged after.
    let started = Instant::now();
    let mut pings = 0;
    let mut replied = false;
    while started.elapsed() < Duration::from_millis(2600) {
        match conn.next_event(TIMEOUT).await {
            Event::Json(v) if v == json!({}) => {
                pings += 1;
                conn.send_text("{}").await;
            }
            Event::Json(v) => {
                assert_eq!(v["id"], id, "{v}");
                replied = true;
            }
            other => panic!("connection ended: {other:?}"),
        }
    }
    assert!(replied, "the subscribe was answered");
    assert!(pings >= 2, "{pings} pings in 2.6 s with ping_interval 1s");
}
