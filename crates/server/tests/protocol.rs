//! The native protocol over WebSocket against a real server: the happy path, batching,
//! malformed input and channel errors.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{eventually, start, Conn, TIMEOUT};
use switchboard_hub::NamespaceOptions;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn connect_reply_has_client_id_and_ping_settings() {
    let server = start(|c| c.client.ping_interval = Duration::from_secs(25)).await;
    let mut conn = Conn::open(server.addr()).await;
    conn.send_text(r#"{"id":1,"connect":{}}"#).await;
    let reply = conn.next_json().await;
    assert_eq!(reply["id"], 1, "{reply}");
    let result = &reply["connect"];
    assert!(
        result["client"].as_str().is_some_and(|c| !c.is_empty()),
        "{reply}"
    );
    assert_eq!(result["ping"], 25, "{reply}");
    assert_eq!(result["pong"], true, "{reply}");
}

#[tokio::test]
async fn publication_reaches_other_subscriber() {
    let server = start(|_| {}).await;
    let mut subscriber = Conn::connected(server.addr()).await;
    let mut publisher = Conn::connected(server.addr()).await;
    subscriber.subscribe("news").await;

    publisher.publish("news", json!({"text": "hello"})).await;
    let (channel, publication) = subscriber.next_publication().await;
    assert_eq!(channel, "news");
    assert_eq!(publication["data"], json!({"text": "hello"}));
    assert_eq!(
        publication["info"]["client"], publisher.client_id,
        "info names the publishing client: {publication}"
    );

    // The publisher is not subscribed: it gets only its reply, no push.
    publisher.expect_silence(Duration::from_millis(200)).await;

    // A second publication arrives after the first, in order.
    publisher.publish("news", json!(1)).await;
    publisher.publish("news", json!(2)).await;
    assert_eq!(subscriber.next_publication().await.1["data"], 1);
    assert_eq!(subscriber.next_publication().await.1["data"], 2);

    // After unsubscribing, nothing more arrives.
    subscriber
        .request_ok(json!({"unsubscribe": {"channel": "news"}}))
        .await;
    publisher.publish("news", json!(3)).await;
    subscriber.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn batched_commands_get_replies_in_order_in_one_frame() {
    let server = start(|_| {}).await;
    let mut conn = Conn::open(server.addr()).await;
    let commands = [
        json!({"connect": {}}),
        json!({"subscribe": {"channel": "a"}}),
        json!({"subscribe": {"channel": "b"}}),
        json!({"publish": {"channel": "elsewhere", "data": {"x": 1}}}),
        json!({"ping": {}}),
        json!({"unsubscribe": {"channel": "a"}}),
    ];
    let ids = conn.send_batch(&commands).await;
    // Every reply of one incoming frame is queued before the writer runs, so they are coalesced
    // into one outgoing frame of newline-separated messages.
    let frame = conn.next_frame(TIMEOUT).await.expect("a text frame");
    let got: Vec<u64> = frame.iter().map(|v| v["id"].as_u64().unwrap()).collect();
    let want: Vec<u64> = ids.iter().map(|&i| u64::from(i)).collect();
    assert_eq!(got, want, "replies in command order: {frame:?}");
    let methods = [
        "connect",
        "subscribe",
        "subscribe",
        "publish",
        "ping",
        "unsubscribe",
    ];
    for (reply, method) in frame.iter().zip(methods) {
        assert!(reply.get("error").is_none(), "{reply}");
        assert!(reply.get(method).is_some(), "{method}: {reply}");
    }
}

#[tokio::test]
async fn batched_publications_arrive_in_order() {
    let server = start(|_| {}).await;
    let mut subscriber = Conn::connected(server.addr()).await;
    let mut publisher = Conn::connected(server.addr()).await;
    subscriber.subscribe("feed").await;
    let commands: Vec<Value> = (0..50)
        .map(|i| json!({"publish": {"channel": "feed", "data": {"n": i}}}))
        .collect();
    let ids = publisher.send_batch(&commands).await;
    for id in ids {
        let reply = publisher.reply(id).await;
        assert!(reply.get("publish").is_some(), "{reply}");
    }
    for i in 0..50 {
        let (channel, publication) = subscriber.next_publication().await;
        assert_eq!(channel, "feed");
        assert_eq!(publication["data"]["n"], i);
    }
}

/// Bursts of `publish` commands (frames of them sent back to back, so that the server handles
/// several in one go and delivers each channel's run together) reach every subscriber complete
/// and in order, across channels too, with a channel that keeps history (its publications are
/// held in its stream and delivered there, between the gathered ones) in the middle.
#[tokio::test]
async fn bursts_of_publications_arrive_complete_and_in_order() {
    let server = start(|c| {
        let mut history = namespace("h", true, true);
        history.history_size = 1000;
        history.history_ttl = Duration::from_secs(60);
        c.channel.namespaces.push(history);
    })
    .await;
    let channel_of = |i: usize| match (i % 7, i % 11) {
        (3, _) => "other",
        (_, 5) => "h:x",
        _ => "feed",
    };
    // Who subscribes to what.
    let wants: [&[&str]; 3] = [&["feed", "other", "h:x"], &["feed"], &["other", "h:x"]];
    let mut subscribers = Vec::new();
    for channels in wants {
        let mut conn = Conn::connected(server.addr()).await;
        for channel in channels {
            conn.subscribe(channel).await;
        }
        subscribers.push(conn);
    }
    let mut publisher = Conn::connected(server.addr()).await;
    const FRAMES: usize = 6;
    const PER_FRAME: usize = 80;
    let mut ids = Vec::new();
    for frame in 0..FRAMES {
        let commands: Vec<Value> = (0..PER_FRAME)
            .map(|k| {
                let i = frame * PER_FRAME + k;
                json!({"publish": {"channel": channel_of(i), "data": {"n": i}}})
            })
            .collect();
        ids.extend(publisher.send_batch(&commands).await);
    }
    for id in ids {
        let reply = publisher.reply(id).await;
        assert!(reply.get("publish").is_some(), "{reply}");
    }
    for (conn, channels) in subscribers.iter_mut().zip(wants) {
        let expected: Vec<(String, u64)> = (0..FRAMES * PER_FRAME)
            .filter(|i| channels.contains(&channel_of(*i)))
            .map(|i| (channel_of(i).to_string(), i as u64))
            .collect();
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let (channel, publication) = conn.next_publication().await;
            got.push((channel, publication["data"]["n"].as_u64().unwrap()));
        }
        assert_eq!(got, expected, "subscriber of {channels:?}");
        conn.expect_silence(Duration::from_millis(100)).await;
    }
}

/// Several publishers sending bursts into one channel with history at the same time, on a
/// runtime with several threads (so that their bursts are held in the same stream and
/// delivered by whichever poll ends first): a plain and a recoverable subscriber each get every
/// publication once, in offset order, and the recoverable one is never told to resubscribe.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_bursts_into_a_history_channel_keep_offset_order() {
    let server = start(|c| {
        let mut history = namespace("h", true, true);
        history.history_size = 10_000;
        history.history_ttl = Duration::from_secs(60);
        c.channel.namespaces.push(history);
    })
    .await;
    let mut plain = Conn::connected(server.addr()).await;
    plain.subscribe("h:x").await;
    let mut recoverable = Conn::connected(server.addr()).await;
    let sub = recoverable
        .request_ok(json!({"subscribe": {"channel": "h:x", "recoverable": true}}))
        .await;
    assert_eq!(sub["recoverable"], true, "{sub}");
    const PUBLISHERS: usize = 4;
    const FRAMES: usize = 10;
    const PER_FRAME: usize = 50;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let addr = server.addr();
            tokio::spawn(async move {
                let mut publisher = Conn::connected(addr).await;
                let mut ids = Vec::new();
                for frame in 0..FRAMES {
                    let commands: Vec<Value> = (0..PER_FRAME)
                        .map(|k| json!({"publish": {"channel": "h:x", "data": {"p": p, "n": frame * PER_FRAME + k}}}))
                        .collect();
                    ids.extend(publisher.send_batch(&commands).await);
                }
                for id in ids {
                    let reply = publisher.reply(id).await;
                    assert!(reply.get("publish").is_some(), "{reply}");
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let total = (PUBLISHERS * FRAMES * PER_FRAME) as u64;
    for conn in [&mut plain, &mut recoverable] {
        // Offsets 1..=total in order; each publisher's own publications in its order too.
        let mut next_of = [0u64; PUBLISHERS];
        for offset in 1..=total {
            let (channel, publication) = conn.next_publication().await;
            assert_eq!(channel, "h:x");
            assert_eq!(publication["offset"], offset, "{publication}");
            let p = publication["data"]["p"].as_u64().unwrap() as usize;
            assert_eq!(publication["data"]["n"], next_of[p], "{publication}");
            next_of[p] += 1;
        }
        conn.expect_silence(Duration::from_millis(100)).await;
    }
}

/// A publication held for a burst is delivered before a subscribe in the same frame reads the
/// stream's position: the recoverable subscriber starts after it and is not told to resubscribe
/// (2500) when it would otherwise arrive below its position.
#[tokio::test]
async fn a_subscribe_after_a_held_publication_starts_after_it() {
    let server = start(|c| {
        let mut history = namespace("h", true, true);
        history.history_size = 100;
        history.history_ttl = Duration::from_secs(60);
        c.channel.namespaces.push(history);
    })
    .await;
    let mut conn = Conn::connected(server.addr()).await;
    let ids = conn
        .send_batch(&[
            json!({"publish": {"channel": "h:x", "data": {"n": 1}}}),
            json!({"subscribe": {"channel": "h:x", "recoverable": true}}),
        ])
        .await;
    let mut replies = Vec::new();
    for id in ids {
        replies.push(conn.reply(id).await);
    }
    assert!(replies[0].get("publish").is_some(), "{}", replies[0]);
    assert_eq!(replies[1]["subscribe"]["offset"], 1, "{}", replies[1]);
    let mut other = Conn::connected(server.addr()).await;
    other.publish("h:x", json!({"n": 2})).await;
    let (channel, publication) = conn.next_publication().await;
    assert_eq!(channel, "h:x");
    assert_eq!(publication["offset"], 2, "{publication}");
    conn.expect_silence(Duration::from_millis(100)).await;
}

/// A client that publishes to a channel it is subscribed to gets each publication before the
/// reply to its `publish`, also within a burst (the documented example session shows this order).
#[tokio::test]
async fn a_subscribed_publisher_gets_its_publication_before_the_reply() {
    let server = start(|_| {}).await;
    let mut conn = Conn::connected(server.addr()).await;
    conn.subscribe("echo").await;
    let commands: Vec<Value> = (0..20)
        .map(|i| json!({"publish": {"channel": "echo", "data": {"n": i}}}))
        .collect();
    let ids = conn.send_batch(&commands).await;
    for (i, id) in ids.into_iter().enumerate() {
        let push = conn.next_json().await;
        assert_eq!(push["push"]["pub"]["data"]["n"], i, "{push}");
        let reply = conn.next_json().await;
        assert_eq!(reply["id"], id, "{reply}");
        assert!(reply.get("publish").is_some(), "{reply}");
    }
}

#[tokio::test]
async fn malformed_json_closes_with_3501() {
    let server = start(|_| {}).await;
    let mut conn = Conn::connected(server.addr()).await;
    conn.send_text("{\"id\":2,\"subscribe\":").await;
    assert_eq!(conn.expect_close(3501, TIMEOUT).await, "bad request");

    // Before connect too, and one bad line fails the whole frame.
    let mut conn = Conn::open(server.addr()).await;
    conn.send_text("{\"id\":1,\"connect\":{}}\nnot json").await;
    conn.expect_close(3501, TIMEOUT).await;

    // Valid JSON of the wrong shape.
    let mut conn = Conn::connected(server.addr()).await;
    conn.send_text("[1,2,3]").await;
    conn.expect_close(3501, TIMEOUT).await;
}

#[tokio::test]
async fn unknown_method_is_error_104_and_connection_lives() {
    let server = start(|_| {}).await;
    let mut conn = Conn::connected(server.addr()).await;
    assert_eq!(conn.request_error(json!({"frobnicate": {}})).await, 104);
    conn.assert_alive().await;
    conn.subscribe("still-works").await;
}

#[tokio::test]
async fn command_before_connect_closes_with_3501() {
    let server = start(|_| {}).await;
    let mut conn = Conn::open(server.addr()).await;
    conn.send_text(r#"{"id":1,"subscribe":{"channel":"news"}}"#)
        .await;
    conn.expect_close(3501, TIMEOUT).await;
}

#[tokio::test]
async fn binary_frame_closes_with_3501() {
    let server = start(|_| {}).await;
    let mut conn = Conn::connected(server.addr()).await;
    conn.send(Message::binary(br#"{"id":2,"ping":{}}"#.to_vec()))
        .await;
    conn.expect_close(3501, TIMEOUT).await;
}

#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() {
    let server = start(|_| {}).await;
    let mut conn = Conn::connected(server.addr()).await;
    conn.send_raw_text(b"{\"id\":2,\"ping\":{},\"x\":\"\xff\xfe\"}".to_vec())
        .await;
    conn.expect_close(1007, TIMEOUT).await;
}

#[tokio::test]
async fn message_over_max_message_size_closes_with_1009() {
    let server = start(|c| c.client.max_message_size = 1024).await;
    let mut conn = Conn::connected(server.addr()).await;
    // Just under the limit is fine.
    let data = "x".repeat(900);
    conn.publish("big", json!(data)).await;
    // Over it is not.
    let data = "x".repeat(2048);
    conn.send_text(json!({"id": 100, "publish": {"channel": "big", "data": data}}).to_string())
        .await;
    conn.expect_close(1009, TIMEOUT).await;
}

#[tokio::test]
async fn second_connect_closes_with_3501() {
    let server = start(|_| {}).await;
    let mut conn = Conn::open(server.addr()).await;
    conn.send_text(r#"{"id":1,"connect":{}}"#).await;
    assert!(conn.next_json().await.get("connect").is_some());
    conn.send_text(r#"{"id":1,"connect":{}}"#).await;
    conn.expect_close(3501, TIMEOUT).await;
}

#[tokio::test]
async fn two_methods_in_one_command_close_with_3501() {
    let server = start(|_| {}).await;
    let mut conn = Conn::connected(server.addr()).await;
    conn.send_text(r#"{"id":2,"ping":{},"subscribe":{"channel":"x"}}"#)
        .await;
    conn.expect_close(3501, TIMEOUT).await;
}

#[tokio::test]
async fn client_close_is_echoed_and_releases_the_connection() {
    let server = start(|_| {}).await;
    let mut conn = Conn::connected(server.addr()).await;
    conn.subscribe("news").await;
    assert_eq!(server.hub().metrics().connections(), 1);
    conn.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await;
    conn.expect_close(1000, TIMEOUT).await;
    let released = eventually(TIMEOUT, || async {
        server.hub().metrics().connections() == 0 && server.hub().subscriber_count("news") == 0
    })
    .await;
    assert!(released, "connection or subscription not released");
}

fn namespace(name: &str, subscribe: bool, publish: bool) -> NamespaceOptions {
    let mut ns = NamespaceOptions::default();
    ns.name = name.into();
    ns.allow_subscribe_for_client = subscribe;
    ns.allow_subscribe_for_anonymous = subscribe;
    ns.allow_publish_for_client = publish;
    ns.allow_publish_for_anonymous = publish;
    ns
}

#[tokio::test]
async fn channel_errors_keep_the_connection_alive() {
    let server = start(|c| {
        c.channel.allow_unknown_namespaces = false;
        c.channel.max_length = 32;
        c.channel.namespaces.push(namespace("closed", false, false));
        c.channel
            .namespaces
            .push(namespace("readonly", true, false));
        c.channel.namespaces.push(namespace("open", true, true));
        c.client.max_channels = 3;
    })
    .await;
    let mut conn = Conn::connected(server.addr()).await;
    let sub = |channel: &str| json!({"subscribe": {"channel": channel}});
    let publ = |channel: &str| json!({"publish": {"channel": channel, "data": {}}});

    // Unknown namespace: 102.
    assert_eq!(conn.request_error(sub("nowhere:1")).await, 102);
    assert_eq!(conn.request_error(publ("nowhere:1")).await, 102);
    // Subscribing not allowed: 103.
    assert_eq!(conn.request_error(sub("closed:1")).await, 103);
    // Publishing not allowed: 103.
    conn.subscribe("readonly:1").await;
    assert_eq!(conn.request_error(publ("readonly:1")).await, 103);
    // Double subscribe: 105.
    assert_eq!(conn.request_error(sub("readonly:1")).await, 105);
    // Bad names: 102.
    assert_eq!(conn.request_error(sub("open:has space")).await, 102);
    assert_eq!(conn.request_error(sub("")).await, 102);
    let long = format!("open:{}", "x".repeat(40));
    assert_eq!(conn.request_error(sub(&long)).await, 102);
    let exactly = format!("open:{}", "x".repeat(27));
    assert_eq!(exactly.len(), 32);
    conn.subscribe(&exactly).await;
    // Channel limit (3): 106.
    conn.subscribe("open:2").await;
    assert_eq!(conn.request_error(sub("open:3")).await, 106);
    // Leaving one makes room again.
    conn.request_ok(json!({"unsubscribe": {"channel": "open:2"}}))
        .await;
    conn.subscribe("open:3").await;

    // Errors have a message too, and after all of them the connection still works.
    let reply = conn.request(sub("closed:2")).await;
    assert_eq!(reply["error"]["code"], 103, "{reply}");
    assert_eq!(reply["error"]["message"], "permission denied", "{reply}");
    conn.assert_alive().await;
    conn.publish("open:3", json!("ok")).await;
    let (channel, _) = conn.next_publication().await;
    assert_eq!(channel, "open:3");
}
