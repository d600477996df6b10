//! The session state machine without a transport: a [`Client`] on a [`Hub`] with the in-memory
//! broker, fed frames directly and read through its outbound queue, with time passed in as `now`
//! (the session takes its clock as an argument), in the spirit of quinn's in-memory `Pair`.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use switchboard_hub::{Client, Drained, Hub, HubConfig, MemoryBroker, TransportInfo};
use switchboard_proto::DisconnectCode;

const TRANSPORT: TransportInfo = TransportInfo::new("test", true);

/// A hub and its sessions, driven by hand.
struct Harness {
    hub: Hub,
}

/// One session and what it has been sent.
struct Session {
    client: Client,
    next_id: u32,
}

impl Harness {
    /// A hub with development-like permissions: anonymous clients may subscribe and publish.
    fn new(tweak: impl FnOnce(&mut HubConfig)) -> Self {
        let mut config = HubConfig::default();
        config.client.allow_anonymous = true;
        config.channel.allow_unknown_namespaces = true;
        let d = &mut config.channel.default;
        d.allow_subscribe_for_anonymous = true;
        d.allow_subscribe_for_client = true;
        d.allow_publish_for_anonymous = true;
        d.allow_publish_for_client = true;
        tweak(&mut config);
        Self {
            hub: Hub::new(config, Arc::new(MemoryBroker::new()), "test".into()),
        }
    }

    fn session(&self) -> Session {
        Session {
            client: self.hub.accept(TRANSPORT).expect("accepted"),
            next_id: 0,
        }
    }

    /// A connected session.
    async fn connected(&self) -> Session {
        let mut s = self.session();
        let reply = s.request(json!({"connect": {}})).await;
        assert!(reply["connect"]["client"].is_string(), "{reply}");
        s
    }
}

impl Session {
    /// Sends one command (with the next id); returns its reply.
    async fn request(&mut self, mut command: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        command["id"] = json!(id);
        self.frame(&command.to_string())
            .await
            .unwrap_or_else(|code| panic!("{command} closed the session: {code}"));
        self.take()
            .into_iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no reply to {command}"))
    }

    async fn frame(&mut self, text: &str) -> Result<(), DisconnectCode> {
        self.client
            .handle_frame(text.as_bytes(), Instant::now())
            .await
    }

    /// Everything queued for the connection, one JSON value per message.
    fn take(&self) -> Vec<Value> {
        let mut batch: Vec<Bytes> = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        loop {
            match self
                .client
                .outbound()
                .poll_drain(&mut cx, &mut batch, 1024, false)
            {
                Poll::Ready(Drained::Items) => {
                    for item in batch.drain(..) {
                        let text = std::str::from_utf8(&item).expect("utf-8");
                        out.extend(text.split('\n').map(|l| {
                            serde_json::from_str::<Value>(l)
                                .unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}"))
                        }));
                    }
                }
                Poll::Ready(Drained::Closed(code)) => panic!("queue closed with {code}"),
                _ => return out,
            }
        }
    }

    /// Runs the session's timers as if `now` had come.
    async fn timers_at(&mut self, now: Instant) -> Result<(), DisconnectCode> {
        self.client.on_timer(now).await
    }
}

#[tokio::test]
async fn commands_before_connect_close_the_session() {
    let h = Harness::new(|_| {});
    let mut s = h.session();
    let closed = s.frame(r#"{"id":1,"subscribe":{"channel":"a"}}"#).await;
    assert_eq!(closed, Err(DisconnectCode::BAD_REQUEST));
}

#[tokio::test]
async fn a_session_that_never_connects_is_stale_after_the_handshake_timeout() {
    let h = Harness::new(|c| c.client.handshake_timeout = Duration::from_secs(3));
    let mut s = h.session();
    let start = Instant::now();
    assert_eq!(s.timers_at(start + Duration::from_secs(1)).await, Ok(()));
    assert_eq!(
        s.timers_at(start + Duration::from_secs(4)).await,
        Err(DisconnectCode::STALE)
    );
}

#[tokio::test]
async fn connect_reply_announces_pings_and_a_second_connect_is_refused() {
    let h = Harness::new(|c| c.client.ping_interval = Duration::from_secs(10));
    let mut s = h.session();
    let reply = s.request(json!({"connect": {"name": "t"}})).await;
    assert_eq!(reply["connect"]["ping"], 10, "{reply}");
    assert_eq!(reply["connect"]["pong"], true, "{reply}");
    assert!(s.client.is_connected());
    let again = s.frame(r#"{"id":9,"connect":{}}"#).await;
    assert_eq!(again, Err(DisconnectCode::BAD_REQUEST));
}

#[tokio::test]
async fn pings_and_the_pong_deadline() {
    let h = Harness::new(|c| {
        c.client.ping_interval = Duration::from_secs(10);
        c.client.pong_timeout = Duration::from_secs(3);
    });
    let mut s = h.connected().await;
    let start = Instant::now();
    // A ping when the interval has passed; answered in time, nothing happens.
    s.timers_at(start + Duration::from_secs(11)).await.unwrap();
    assert_eq!(s.take(), vec![json!({})]);
    s.frame("{}").await.unwrap();
    s.timers_at(start + Duration::from_secs(15)).await.unwrap();
    // The next ping goes unanswered: closed with 3012 after the pong timeout.
    s.timers_at(start + Duration::from_secs(22)).await.unwrap();
    assert_eq!(s.take(), vec![json!({})]);
    assert_eq!(
        s.timers_at(start + Duration::from_secs(26)).await,
        Err(DisconnectCode::NO_PONG)
    );
}

#[tokio::test]
async fn subscribe_then_publish_in_one_frame_delivers_in_order() {
    let h = Harness::new(|_| {});
    let mut s = h.connected().await;
    let frame = [
        json!({"id": 10, "subscribe": {"channel": "room"}}),
        json!({"id": 11, "publish": {"channel": "room", "data": {"n": 1}}}),
    ]
    .map(|v| v.to_string())
    .join("\n");
    s.frame(&frame).await.unwrap();
    let got = s.take();
    assert_eq!(got[0]["id"], 10, "{got:?}");
    // The publication and the publish reply follow, the subscribe reply first.
    let push = got
        .iter()
        .find(|m| m.get("push").is_some())
        .expect("a push");
    assert_eq!(push["push"]["pub"]["data"], json!({"n": 1}));
    assert!(got
        .iter()
        .any(|m| m["id"] == 11 && m.get("error").is_none()));
}

#[tokio::test]
async fn data_passes_byte_for_byte() {
    let h = Harness::new(|_| {});
    let mut s = h.connected().await;
    s.request(json!({"subscribe": {"channel": "raw"}})).await;
    let data = r#"{"z":1,"a":2.50,"big":123456789012345678901234,"u":"\u00e9"}"#;
    s.frame(&format!(
        r#"{{"id":50,"publish":{{"channel":"raw","data":{data}}}}}"#
    ))
    .await
    .unwrap();
    let mut batch = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    let _ = s
        .client
        .outbound()
        .poll_drain(&mut cx, &mut batch, 1024, false);
    let text: String = batch
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains(data), "{text}");
}

#[tokio::test]
async fn recovery_with_an_empty_epoch_and_refusals_that_leave_no_trace() {
    let h = Harness::new(|c| {
        let d = &mut c.channel.default;
        d.history_size = 10;
        d.history_ttl = Duration::from_secs(60);
        d.force_push_join_leave = true;
        d.join_leave = true;
    });
    let mut watcher = h.connected().await;
    watcher
        .request(json!({"subscribe": {"channel": "h"}}))
        .await;
    for n in 1..=3 {
        let data = serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap();
        h.hub.publish("h", data, None).await.unwrap();
    }
    watcher.take();

    // Empty epoch: "any epoch", recover after offset 1.
    let mut s = h.connected().await;
    let reply = s
        .request(json!({"subscribe": {"channel": "h", "recover": true, "offset": 1, "epoch": ""}}))
        .await;
    let result = &reply["subscribe"];
    assert_eq!(result["recovered"], true, "{reply}");
    let offsets: Vec<_> = result["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [2, 3]);
    watcher.take(); // its join

    // A position from another epoch with the reject flag: 112, and the watcher sees nothing.
    let mut refused = h.connected().await;
    let reply = refused
        .request(json!({"subscribe": {"channel": "h", "recover": true, "offset": 1, "epoch": "nope", "flag": 2}}))
        .await;
    assert_eq!(reply["error"]["code"], 112, "{reply}");
    tokio::task::yield_now().await;
    assert_eq!(watcher.take(), Vec::<Value>::new(), "no join or leave");
}

#[tokio::test]
async fn rpc_without_a_handler_is_not_available() {
    let h = Harness::new(|_| {});
    let mut s = h.connected().await;
    let reply = s.request(json!({"rpc": {"method": "x", "data": {}}})).await;
    assert_eq!(reply["error"]["code"], 108, "{reply}");
}

#[tokio::test]
async fn server_api_controls_count_toward_the_queue_limit() {
    let h = Harness::new(|c| c.client.max_queue_bytes = 2048);
    let s = h.connected().await;
    // The session never applies its controls: they pile up until the queue limit closes it.
    for n in 0..200 {
        let channel = format!("c{n:0>40}");
        let _ = h
            .hub
            .subscribe_user("", Some(s.client.id()), &channel, None);
    }
    assert!(
        s.client.outbound().is_closed(),
        "200 pending controls were not bounded"
    );
    let mut batch = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(
        s.client
            .outbound()
            .poll_drain(&mut cx, &mut batch, 16, true),
        Poll::Ready(Drained::Closed(DisconnectCode::SLOW))
    );
}

#[tokio::test]
async fn relays_reach_this_node_by_its_id_and_as_every_node() {
    let h = Harness::new(|_| {});
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    h.hub.on_relay(
        "topic",
        Arc::new(move |data: String| {
            let _ = tx.send(data);
        }),
    );
    let id = h.hub.node().id.clone();
    h.hub.relay(&id, "topic", "one".into()).await.unwrap();
    h.hub
        .relay("another-node", "topic", "lost".into())
        .await
        .unwrap();
    h.hub.relay_all("topic", "two".into()).await.unwrap();
    h.hub
        .relay_all("elsewhere", "ignored".into())
        .await
        .unwrap();
    assert_eq!(rx.recv().await.as_deref(), Some("one"));
    assert_eq!(rx.recv().await.as_deref(), Some("two"));
    assert!(rx.try_recv().is_err());
}
