//! Client data keeps its exact bytes through the server API, with each broker (memory, the local
//! Redis on 127.0.0.1:6379, the local NATS with JetStream on 127.0.0.1:4222): what `publish`,
//! `broadcast` and `batch` take in `data`, what a subscription token carries in `info`, arrives
//! at WebSocket subscribers, in recovery, and in `history` and `presence` answers byte for byte.
//! Every check reads the raw text of pushes and HTTP answers, never a parsed tree.
//!
//! Also the regressions of deeply nested client data (which once made `history` and `presence`
//! panic on serde_json's nesting limit and drop the HTTP connection), and deeply nested request
//! bodies, which get an answer.
//!
//! Redis and NATS tests use a prefix unique to the run and delete what they stored when they
//! end, failed or not: Redis keys by SCAN + DEL (never FLUSH), NATS storage through
//! `NatsBroker::delete_storage`.

mod support;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use support::{eventually, start_toml, Conn, TIMEOUT};
use switchboard_http::Server;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "api-raw-data-key";
const SECRET: &str = "api-raw-data-secret";
const REDIS: &str = "127.0.0.1:6379";
const NATS: &str = "127.0.0.1:4222";

/// Data whose text a parse-and-reserialise changes: keys out of order, `2.50`, an integer no
/// `f64` holds, `1.0`, `\u` escapes (one a surrogate pair), nesting with `null` and `true`.
const DATA: &str = r#"{"z":1,"a":2.50,"big":123456789012345678901234,"one":1.0,"u":"\u00e9\ud83d\ude00","nested":{"b":[1,{"y":null,"x":true}]}}"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BrokerKind {
    Memory,
    Redis,
    Nats,
}

/// `h:` keeps history (and recovers), `p:` keeps presence and pushes joins to every subscriber,
/// `q:` keeps presence without join pushes.
fn toml(kind: BrokerKind, prefix: &str) -> String {
    let broker = match kind {
        BrokerKind::Memory => String::new(),
        BrokerKind::Redis => format!(
            "[broker]\ntype = \"redis\"\n[broker.redis]\naddresses = [\"redis://{REDIS}\"]\n\
             prefix = \"{prefix}\"\n"
        ),
        BrokerKind::Nats => format!(
            "[broker]\ntype = \"nats\"\n[broker.nats]\nurl = \"nats://{NATS}\"\n\
             prefix = \"{prefix}\"\n"
        ),
    };
    format!(
        r#"
[api]
key = "{KEY}"

[client.token]
hmac_secret_key = "{SECRET}"

{broker}

[[channel.namespaces]]
name = "h"
allow_subscribe_for_client = true
allow_publish_for_client = true
history_size = 100
history_ttl = "300s"
history_meta_ttl = "600s"

[[channel.namespaces]]
name = "p"
allow_subscribe_for_client = true
presence = true
join_leave = true
force_push_join_leave = true

[[channel.namespaces]]
name = "q"
allow_subscribe_for_client = true
presence = true
"#
    )
}

/// A server on `kind`, and the guard that deletes its broker storage.
async fn start(kind: BrokerKind, test: &str) -> (Server, Storage) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("sbapiraw-{test}-{}-{nanos}", std::process::id());
    let storage = Storage {
        kind,
        prefix: prefix.clone(),
    };
    let service = match kind {
        BrokerKind::Memory => None,
        BrokerKind::Redis => Some(("Redis", REDIS)),
        BrokerKind::Nats => Some(("NATS (with JetStream)", NATS)),
    };
    if let Some((what, addr)) = service {
        let addr: SocketAddr = addr.parse().unwrap();
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok(),
            "this test needs {what} on {addr}; `scripts/test` starts it"
        );
    }
    let server = start_toml(&toml(kind, &prefix)).await;
    let hub = server.hub();
    assert!(
        eventually(
            Duration::from_secs(10),
            || async move { hub.broker_connected() }
        )
        .await,
        "the {kind:?} broker connects"
    );
    (server, storage)
}

/// Deletes a test's Redis keys or NATS stream and buckets when dropped, also after a failure.
struct Storage {
    kind: BrokerKind,
    prefix: String,
}

impl Drop for Storage {
    fn drop(&mut self) {
        let result = match self.kind {
            BrokerKind::Memory => return,
            BrokerKind::Redis => redis_delete_prefix(&self.prefix).map(|_| ()),
            BrokerKind::Nats => {
                let prefix = self.prefix.clone();
                // Its own runtime on its own thread: Drop cannot await.
                std::thread::spawn(move || nats_delete_storage(&prefix))
                    .join()
                    .unwrap_or_else(|_| Err("cleanup panicked".into()))
                    .map_err(std::io::Error::other)
            }
        };
        if let Err(e) = result {
            eprintln!(
                "cleaning {:?} storage of {} failed: {e}",
                self.kind, self.prefix
            );
        }
    }
}

// ---- tests ----

#[tokio::test]
async fn memory_api_data_arrives_byte_for_byte() {
    data_arrives_byte_for_byte(BrokerKind::Memory).await;
}

#[tokio::test]
async fn redis_api_data_arrives_byte_for_byte() {
    data_arrives_byte_for_byte(BrokerKind::Redis).await;
}

#[tokio::test]
async fn nats_api_data_arrives_byte_for_byte() {
    data_arrives_byte_for_byte(BrokerKind::Nats).await;
}

#[tokio::test]
async fn memory_deeply_nested_data_in_history_and_presence() {
    deeply_nested_data(BrokerKind::Memory).await;
}

#[tokio::test]
async fn redis_deeply_nested_data_in_history_and_presence() {
    deeply_nested_data(BrokerKind::Redis).await;
}

#[tokio::test]
async fn nats_deeply_nested_data_in_history_and_presence() {
    deeply_nested_data(BrokerKind::Nats).await;
}

/// [`DATA`] through `publish`, `broadcast` and `batch` (and a client's publish) to a subscriber,
/// into `history`, through recovery; as connection and channel info into `presence` and joins.
async fn data_arrives_byte_for_byte(kind: BrokerKind) {
    let (server, _storage) = start(kind, "bytes").await;
    let addr = server.addr();
    let (channel, other) = ("h:raw", "h:raw2");
    let with_data = format!("\"data\":{DATA}");
    let mut sub = Conn::connected_with_token(addr, &token("sub", None)).await;
    sub.subscribe(channel).await;
    sub.subscribe(other).await;
    let mut sub = Lines::new(sub);

    // publish
    let body = format!(r#"{{"channel":"{channel}","data":{DATA}}}"#);
    let (status, text) = api_text(addr, "publish", &body).await;
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["result"]["offset"], 1, "{text}");
    let push = sub.next_containing("\"pub\"").await;
    assert!(push.contains(&with_data), "publish push: {push}");

    // broadcast: both channels
    let body = format!(r#"{{"channels":["{channel}","{other}"],"data":{DATA}}}"#);
    let (status, text) = api_text(addr, "broadcast", &body).await;
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains("error"), "{text}");
    let mut into = Vec::new();
    for _ in [channel, other] {
        let push = sub.next_containing("\"pub\"").await;
        assert!(push.contains(&with_data), "broadcast push: {push}");
        into.push(push);
    }
    for ch in [channel, other] {
        let name = format!("\"channel\":\"{ch}\"");
        assert!(
            into.iter().any(|p| p.contains(&name)),
            "no push into {ch}: {into:?}"
        );
    }

    // batch: a publish, then the history that includes it
    let body = format!(
        r#"{{"commands":[{{"publish":{{"channel":"{channel}","data":{DATA}}}}},{{"history":{{"channel":"{channel}","limit":100}}}}]}}"#
    );
    let (status, text) = api_text(addr, "batch", &body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text.matches(&with_data).count(), 3, "batch history: {text}");
    let push = sub.next_containing("\"pub\"").await;
    assert!(push.contains(&with_data), "batch publish push: {push}");

    // A client's publication (the path that always kept data raw) lands in the same history.
    let mut publisher = Conn::connected_with_token(addr, &token("pub", None)).await;
    ws_publish(&mut publisher, channel, DATA).await;
    let push = sub.next_containing("\"pub\"").await;
    assert!(push.contains(&with_data), "client publish push: {push}");

    // history, both directions
    for reverse in [false, true] {
        let body = format!(r#"{{"channel":"{channel}","reverse":{reverse},"limit":10}}"#);
        let (status, text) = api_text(addr, "history", &body).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(text.matches(&with_data).count(), 4, "history: {text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["result"]["offset"], 4, "{text}");
    }

    // recovery from the start of the stream
    let mut late = Conn::connected_with_token(addr, &token("late", None)).await;
    let id = late.id();
    late.send_text(format!(
        r#"{{"id":{id},"subscribe":{{"channel":"{channel}","recover":true,"offset":0,"epoch":""}}}}"#
    ))
    .await;
    let reply = Lines::new(late).next_containing("\"subscribe\"").await;
    assert!(reply.contains("\"recovered\":true"), "{reply}");
    assert_eq!(reply.matches(&with_data).count(), 4, "recovery: {reply}");

    // Connection info from a token, channel info from the API's subscribe: in joins and presence.
    let room = "p:room";
    let mut watcher = Conn::connected_with_token(addr, &token("watcher", None)).await;
    watcher.subscribe(room).await;
    let mut watcher = Lines::new(watcher);
    let mut with_info = Conn::connected_with_token(addr, &token("infouser", Some(DATA))).await;
    with_info.subscribe(room).await;
    let join = watcher.next_containing("\"infouser\"").await;
    assert!(join.contains("\"join\""), "{join}");
    assert!(
        join.contains(&format!("\"conn_info\":{DATA}")),
        "join: {join}"
    );

    let body = format!(r#"{{"user":"infouser","channel":"p:srv","info":{DATA}}}"#);
    let (status, text) = api_text(addr, "subscribe", &body).await;
    assert_eq!((status, text.as_str()), (200, r#"{"result":{}}"#));
    let conn_info = format!("\"conn_info\":{DATA}");
    let chan_info = format!("\"chan_info\":{DATA}");
    let text = presence_with(addr, "p:srv", &chan_info).await;
    assert!(text.contains(&conn_info), "presence: {text}");
    let text = presence_with(addr, room, &conn_info).await;
    assert_eq!(text.matches(&conn_info).count(), 1, "presence: {text}");
    assert!(text.contains("\"watcher\""), "presence: {text}");
}

/// Polls `presence` of `channel` until its answer contains `needle`; returns that answer.
async fn presence_with(addr: SocketAddr, channel: &str, needle: &str) -> String {
    let body = format!(r#"{{"channel":"{channel}"}}"#);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (status, text) = api_text(addr, "presence", &body).await;
        if status == 200 && text.contains(needle) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence of {channel} without {needle:.100}: {status} {text:.300}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client publishes data nested `levels` deep into a history channel; `history` (alone and in
/// a batch after an API publish of the same data) answers it byte for byte. A connection whose
/// token `info` is that deep shows in `presence` (alone and in a batch).
async fn deeply_nested_data(kind: BrokerKind) {
    let (server, _storage) = start(kind, "deep").await;
    let addr = server.addr();
    let mut publisher = Conn::connected_with_token(addr, &token("pub", None)).await;
    for levels in [200, 1000] {
        let data = nested(levels);
        let with_data = format!("\"data\":{data}");
        let channel = format!("h:deep{levels}");
        ws_publish(&mut publisher, &channel, &data).await;

        let (status, text) = api_text(
            addr,
            "history",
            &format!(r#"{{"channel":"{channel}","limit":100}}"#),
        )
        .await;
        assert_eq!(status, 200, "{levels} levels: {text:.300}");
        assert_eq!(text.matches(&with_data).count(), 1, "{levels}: {text:.300}");
        assert!(
            text.starts_with(r#"{"result":{"publications":[{"data":"#),
            "{text:.300}"
        );

        let body = format!(
            r#"{{"commands":[{{"publish":{{"channel":"{channel}","data":{data}}}}},{{"history":{{"channel":"{channel}","limit":100}}}},{{"info":{{}}}}]}}"#
        );
        let (status, text) = api_text(addr, "batch", &body).await;
        assert_eq!(status, 200, "{levels} levels: {text:.300}");
        assert!(
            text.starts_with(r#"{"replies":[{"publish":{"offset":2,"#),
            "{text:.300}"
        );
        assert_eq!(text.matches(&with_data).count(), 2, "{levels}: {text:.300}");
        assert!(text.contains(r#"{"info":{"nodes":"#), "{text:.300}");

        let room = format!("q:deep{levels}");
        let mut deep_info = Conn::connected_with_token(addr, &token("deep", Some(&data))).await;
        deep_info.subscribe(&room).await;
        let conn_info = format!("\"conn_info\":{data}");
        let text = presence_with(addr, &room, &conn_info).await;
        assert!(
            text.starts_with(r#"{"result":{"presence":{"#),
            "{text:.300}"
        );
        let body = format!(r#"{{"channel":"{room}"}}"#);
        let batch =
            format!(r#"{{"commands":[{{"presence":{body}}},{{"presence_stats":{body}}}]}}"#);
        let (status, text) = api_text(addr, "batch", &batch).await;
        assert_eq!(status, 200, "{levels} levels: {text:.300}");
        assert!(text.contains(&conn_info), "{levels}: {text:.300}");
        assert!(
            text.ends_with(r#"{"presence_stats":{"num_clients":1,"num_users":1}}]}"#),
            "{text:.300}"
        );
        deep_info.assert_alive().await;
    }
    publisher.assert_alive().await;
}

/// Request bodies nested deeper than serde_json's limit (128) get an answer, never a dropped
/// connection: deep client data is accepted and kept; depth where the method expects a string
/// or a number is the wrong shape (200, error 107, like any wrong shape); a truncated body is
/// malformed JSON (400, error 107). Inside a batch the other commands still run.
#[tokio::test]
async fn deeply_nested_request_bodies_get_an_answer() {
    let (server, _storage) = start(BrokerKind::Memory, "deepbody").await;
    let addr = server.addr();
    let bad_request = r#"{"error":{"code":107,"message":"bad request"}}"#;
    let deep = "[".repeat(5000) + &"]".repeat(5000);

    let (status, text) = api_text(addr, "publish", &deep).await;
    assert_eq!((status, text.as_str()), (200, bad_request));
    let body = format!(r#"{{"channel":{deep},"data":1}}"#);
    let (status, text) = api_text(addr, "publish", &body).await;
    assert_eq!((status, text.as_str()), (200, bad_request));
    let body = format!(r#"{{"commands":{deep}}}"#);
    let (status, text) = api_text(addr, "batch", &body).await;
    assert_eq!((status, text.as_str()), (200, bad_request));
    let (status, text) = api_text(addr, "history", &"[".repeat(5000)).await;
    assert_eq!(status, 400, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["error"]["code"], 107, "{text}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("bad request")),
        "{text}"
    );

    // Deep data and deep unknown fields are fine.
    let data = nested(5000);
    let body = format!(r#"{{"channel":"h:deepapi","data":{data},"extra":{deep}}}"#);
    let (status, text) = api_text(addr, "publish", &body).await;
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["result"]["offset"], 1, "{text}");

    // In a batch: the publish before the malformed command is applied and the history after it
    // answers.
    let body = format!(
        r#"{{"commands":[{{"publish":{{"channel":"h:deepapi","data":1}}}},{{"publish":{deep}}},{{"history":{{"channel":"h:deepapi","limit":100}}}}]}}"#
    );
    let (status, text) = api_text(addr, "batch", &body).await;
    assert_eq!(status, 200, "{text:.300}");
    let expected_tail =
        r#"{"error":{"code":107,"message":"bad request"}},{"history":{"publications":[{"data":"#;
    assert!(
        text.starts_with(r#"{"replies":[{"publish":{"offset":2,"#),
        "{text:.300}"
    );
    assert!(text.contains(expected_tail), "{text:.300}");
    assert!(text.contains(&format!("\"data\":{data}")), "{text:.300}");
    assert!(
        text.contains(r#"{"data":1,"offset":2}],"epoch":"#),
        "{text:.300}"
    );
}

/// Answers keep their shapes (error objects without `temporary` except for code 100, `{}` for
/// publications into channels without history, positions with history), now serialised from
/// typed results; data inside them keeps its bytes (`[2.50]`).
#[tokio::test]
async fn answer_shapes_are_unchanged() {
    let (server, _storage) = start(BrokerKind::Memory, "shapes").await;
    let addr = server.addr();
    let (_, text) = api_text(
        addr,
        "publish",
        r#"{"channel":"news","data":{"b":1,"a":2}}"#,
    )
    .await;
    assert_eq!(text, r#"{"result":{}}"#);
    let (_, text) = api_text(addr, "publish", r#"{"channel":"h:s","data":true}"#).await;
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["result"]["offset"], 1, "{text}");
    assert!(
        answer["result"]["epoch"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{text}"
    );
    let (_, text) = api_text(addr, "publish", r#"{"channel":"nowhere:x","data":1}"#).await;
    assert_eq!(
        text,
        r#"{"error":{"code":102,"message":"unknown channel"}}"#
    );
    let (_, text) = api_text(addr, "history", r#"{"channel":"news"}"#).await;
    assert_eq!(text, r#"{"error":{"code":108,"message":"not available"}}"#);
    let (_, text) = api_text(
        addr,
        "broadcast",
        r#"{"channels":["news","nowhere:x","h:s"],"data":[2.50]}"#,
    )
    .await;
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        answer["result"]["responses"][0],
        json!({"result": {}}),
        "{text}"
    );
    assert_eq!(
        answer["result"]["responses"][1]["error"]["code"], 102,
        "{text}"
    );
    assert_eq!(
        answer["result"]["responses"][2]["result"]["offset"], 2,
        "{text}"
    );
    let (_, text) = api_text(addr, "history", r#"{"channel":"h:s","limit":0}"#).await;
    let answer: Value = serde_json::from_str(&text).unwrap();
    let epoch = answer["result"]["epoch"].as_str().unwrap_or_default();
    assert!(!epoch.is_empty(), "{text}");
    assert_eq!(
        answer,
        json!({"result": {"publications": [], "epoch": epoch, "offset": 2}})
    );
    let (_, text) = api_text(addr, "history", r#"{"channel":"h:s","limit":-1}"#).await;
    assert!(text.contains(r#"{"data":[2.50],"offset":2}"#), "{text}");
    let (_, text) = api_text(addr, "presence_stats", r#"{"channel":"p:none"}"#).await;
    assert_eq!(text, r#"{"result":{"num_clients":0,"num_users":0}}"#);
    let (_, text) = api_text(addr, "channels", "").await;
    assert_eq!(text, r#"{"result":{"channels":{}}}"#);
    let (_, text) = api_text(addr, "history_remove", r#"{"channel":"h:s"}"#).await;
    assert_eq!(text, r#"{"result":{}}"#);
}

// ---- helpers ----

/// JSON nested `levels` deep (objects and arrays alternating) around a string with an escape.
fn nested(levels: usize) -> String {
    let mut s = String::with_capacity(levels * 6 + 16);
    for i in 0..levels {
        s.push_str(if i % 2 == 0 { "{\"d\":" } else { "[" });
    }
    s.push_str(r#""\u00e9 2.50""#);
    for i in (0..levels).rev() {
        s.push(if i % 2 == 0 { '}' } else { ']' });
    }
    s
}

/// A connection token for `user`, with `info` (JSON text) copied into the claims verbatim.
fn token(user: &str, info: Option<&str>) -> String {
    #[derive(Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<&'a RawValue>,
    }
    let info = info.map(|i| RawValue::from_string(i.to_string()).expect("valid JSON"));
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub: user,
            info: info.as_deref(),
        },
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// `POST /api/<method>` with `body` as is; the status and the raw answer text.
async fn api_text(addr: SocketAddr, method: &str, body: &str) -> (u16, String) {
    let client = reqwest::Client::builder().timeout(TIMEOUT).build().unwrap();
    let response = client
        .post(format!("http://{addr}/api/{method}"))
        .header("content-type", "application/json")
        .header("X-API-Key", KEY)
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method}: no answer: {e}"));
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .unwrap_or_else(|e| panic!("{method}: answer body: {e}"));
    (status, text)
}

/// Publishes `data` (JSON text, sent as is) from a client; expects success.
async fn ws_publish(conn: &mut Conn, channel: &str, data: &str) {
    let id = conn.id();
    conn.send_text(format!(
        r#"{{"id":{id},"publish":{{"channel":"{channel}","data":{data}}}}}"#
    ))
    .await;
    let reply = conn.reply(id).await;
    assert!(reply.get("error").is_none(), "client publish: {reply}");
}

/// The lines of a connection's text frames, unparsed, for checking bytes (the `Conn` helpers
/// parse what they read).
struct Lines {
    conn: Conn,
    pending: VecDeque<String>,
}

impl Lines {
    fn new(conn: Conn) -> Self {
        Self {
            conn,
            pending: VecDeque::new(),
        }
    }

    /// The next line containing `marker`, skipping others; fails after [`TIMEOUT`].
    async fn next_containing(&mut self, marker: &str) -> String {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            while let Some(line) = self.pending.pop_front() {
                if line.contains(marker) {
                    return line;
                }
            }
            let message = tokio::time::timeout_at(deadline, self.conn.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no line with {marker} within {TIMEOUT:?}"));
            match message {
                Some(Ok(Message::Text(text))) => self
                    .pending
                    .extend(text.as_str().split('\n').map(str::to_string)),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("waiting for {marker}: {other:?}"),
            }
        }
    }
}

// ---- broker storage cleanup ----

/// Deletes every Redis key under `prefix.` with SCAN + DEL; returns how many.
fn redis_delete_prefix(prefix: &str) -> std::io::Result<usize> {
    let mut stream = TcpStream::connect(REDIS)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let pattern = format!("{prefix}.*");
    let mut cursor = "0".to_string();
    let mut deleted = 0;
    loop {
        resp_send(
            &mut stream,
            &["SCAN", &cursor, "MATCH", &pattern, "COUNT", "1000"],
        )?;
        // *2 \r\n $len \r\n cursor \r\n *n \r\n ($len \r\n key \r\n)*
        expect_header(&mut reader, '*')?;
        cursor = resp_bulk(&mut reader)?;
        let n = expect_header(&mut reader, '*')?;
        let keys = (0..n)
            .map(|_| resp_bulk(&mut reader))
            .collect::<std::io::Result<Vec<_>>>()?;
        if !keys.is_empty() {
            let mut args = vec!["DEL"];
            args.extend(keys.iter().map(String::as_str));
            resp_send(&mut stream, &args)?;
            deleted += expect_header(&mut reader, ':')?;
        }
        if cursor == "0" {
            return Ok(deleted);
        }
    }
}

fn resp_send(stream: &mut TcpStream, args: &[&str]) -> std::io::Result<()> {
    let mut out = format!("*{}\r\n", args.len());
    for arg in args {
        out.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(out.as_bytes())
}

/// Reads a `<kind><number>\r\n` line; returns the number.
fn expect_header(reader: &mut impl BufRead, kind: char) -> std::io::Result<usize> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    line.strip_prefix(kind)
        .and_then(|n| n.trim_end().parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("unexpected Redis reply {line:?}")))
}

fn resp_bulk(reader: &mut impl BufRead) -> std::io::Result<String> {
    let len = expect_header(reader, '$')?;
    let mut data = vec![0; len + 2];
    reader.read_exact(&mut data)?;
    data.truncate(len);
    String::from_utf8(data).map_err(std::io::Error::other)
}

/// Deletes the JetStream stream and key-value buckets of `prefix`.
fn nats_delete_storage(prefix: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut config = switchboard_broker_nats::NatsConfig::default();
        config.url = format!("nats://{NATS}");
        config.prefix = prefix.to_string();
        let broker = switchboard_broker_nats::NatsBroker::connect(config, "api-raw-data-cleanup")
            .await
            .map_err(|e| e.to_string())?;
        broker
            .ready(Duration::from_secs(5))
            .await
            .map_err(|e| format!("{e:?}"))?;
        broker.delete_storage().await.map_err(|e| format!("{e:?}"))
    })
}
