//! Library-mode Socket.IO on two embedded nodes sharing Redis, or NATS: namespace-wide emits
//! (`io.emitter(ns)`, `socket.broadcast()`) reach the namespace's sockets on both nodes, once
//! each, in the order they were made, without the sender when asked, with binary attachments.
//! The clients speak Socket.IO v5 over an Engine.IO WebSocket, written out here (the npm
//! `socket.io-client` covers the same in e2e/).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::socketio::{Payload, SioConfig, SocketIo};
use switchboard::{Broker, Config, NatsConfig, Node};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(5);

/// A node on Redis serving a Socket.IO app: `all` emits its arguments to every socket of `/`
/// (`io.emitter`), `others` to every other socket of `/` (`socket.broadcast()`), `bin` emits
/// one binary attachment to every socket of `/`.
async fn node(broker: Broker) -> (SocketAddr, SocketIo, Node) {
    let mut config = Config::development();
    config.socketio.enabled = false; // the built-in semantics stay off: ours are served
    let node = Node::builder()
        .config(config)
        .broker(broker)
        .build()
        .await
        .unwrap();
    let io = SocketIo::new(SioConfig::default());
    let handle = io.clone();
    io.ns("/", move |h| {
        let io = handle.clone();
        h.on("all", move |_socket, data, _ack| {
            io.emitter("/").expect("namespace /").emit("all", data.args);
        });
        h.on("others", |socket, data, _ack| {
            socket.broadcast().emit("others", data.args);
        });
        let io = handle.clone();
        h.on("bin", move |_socket, _data, _ack| {
            let payload = Payload {
                args: vec![json!("bytes"), json!({"_placeholder": true, "num": 0})],
                bins: vec![vec![0u8, 1, 2, 255].into()],
            };
            io.emitter("/")
                .expect("namespace /")
                .emit_payload("bin", payload);
        });
    });
    io.ns("/chat", |_| {});
    let app = node.router().merge(node.socketio(&io));
    let addr = common::serve(app).await;
    (addr, io, node)
}

/// A Socket.IO client of one namespace over a WebSocket.
struct SioClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The namespace prefix of packets (`""` for `/`, `"/chat,"` else).
    prefix: String,
    sid: String,
}

impl SioClient {
    async fn connect(addr: SocketAddr, nsp: &str) -> Self {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let prefix = if nsp == "/" {
            String::new()
        } else {
            format!("{nsp},")
        };
        let mut c = Self {
            ws,
            prefix,
            sid: String::new(),
        };
        let open = c.text().await;
        assert!(open.starts_with('0'), "{open}");
        c.send(format!("40{}", c.prefix)).await;
        let reply = c.text().await;
        let body = reply
            .strip_prefix(&format!("40{}", c.prefix))
            .unwrap_or_else(|| panic!("CONNECT reply: {reply}"));
        let body: Value = serde_json::from_str(body).unwrap();
        c.sid = body["sid"].as_str().unwrap().to_owned();
        c
    }

    async fn send(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The next text frame (answering pings).
    async fn text(&mut self) -> String {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("socket open")
                .unwrap();
            if let Message::Text(t) = frame {
                if t.as_str() == "2" {
                    self.send("3".into()).await;
                    continue;
                }
                return t.as_str().to_owned();
            }
        }
    }

    async fn emit(&mut self, event: &str, args: Vec<Value>) {
        let mut array = vec![json!(event)];
        array.extend(args);
        self.send(format!("42{}{}", self.prefix, Value::Array(array)))
            .await;
    }

    /// The next event other than `warm`, as `(array, attachments)`; `None` when nothing
    /// arrives within `wait`.
    async fn event_within(&mut self, wait: Duration) -> Option<(Vec<Value>, Vec<Vec<u8>>)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            let Message::Text(t) = frame.expect("socket open").unwrap() else {
                panic!("an attachment without its packet");
            };
            let t = t.as_str();
            if t == "2" {
                self.send("3".into()).await;
                continue;
            }
            let (attachments, rest) = if let Some(rest) = t.strip_prefix("45") {
                let (n, rest) = rest.split_once('-').expect("attachment count");
                (n.parse::<usize>().unwrap(), rest)
            } else {
                (0, t.strip_prefix("42").unwrap_or_else(|| panic!("{t}")))
            };
            let json = rest.strip_prefix(&self.prefix).expect("our namespace");
            let Value::Array(array) = serde_json::from_str(json).unwrap() else {
                panic!("{t}");
            };
            let mut bins = Vec::new();
            for _ in 0..attachments {
                match self.ws.next().await.expect("open").unwrap() {
                    Message::Binary(b) => bins.push(b.to_vec()),
                    other => panic!("expected an attachment: {other:?}"),
                }
            }
            if array[0] != json!("warm") {
                return Some((array, bins));
            }
        }
    }

    async fn event(&mut self) -> Vec<Value> {
        self.event_within(WAIT).await.expect("an event in time").0
    }
}

/// Emits `warm` to every socket of `/` from `io` until each client got one, so that both
/// nodes listen to each other before a test counts deliveries.
async fn warm_up(io: &SocketIo, clients: &mut [&mut SioClient]) {
    for c in clients.iter_mut() {
        tokio::time::timeout(WAIT, async {
            loop {
                io.emitter("/").unwrap().emit("warm", vec![]);
                let got = tokio::time::timeout(Duration::from_millis(200), async {
                    loop {
                        if let Message::Text(t) = c.ws.next().await.unwrap().unwrap() {
                            if t.as_str() == "2" {
                                c.send("3".into()).await;
                            } else if t.as_str().starts_with("42[\"warm\"") {
                                return;
                            }
                        }
                    }
                })
                .await;
                if got.is_ok() {
                    return;
                }
            }
        })
        .await
        .expect("the nodes hear each other");
    }
}

fn prefix() -> String {
    format!("sbtest-sio-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn namespace_wide_emits_reach_every_node_once_in_order_on_redis() {
    let prefix = prefix();
    namespace_wide_emits(|| Broker::redis("redis://127.0.0.1:6379", &prefix)).await;
}

#[tokio::test]
async fn namespace_wide_emits_reach_every_node_once_in_order_on_nats() {
    let prefix = prefix();
    namespace_wide_emits(|| {
        let mut config = NatsConfig::default();
        config.url = "nats://127.0.0.1:4222".into();
        config.prefix = prefix.clone();
        Broker::Nats(config)
    })
    .await;
}

/// Two nodes on the broker `broker` makes.
async fn namespace_wide_emits(broker: impl Fn() -> Broker) {
    let (addr_a, io_a, node_a) = node(broker()).await;
    let (addr_b, _io_b, node_b) = node(broker()).await;
    let mut a1 = SioClient::connect(addr_a, "/").await;
    let mut a2 = SioClient::connect(addr_a, "/").await;
    let mut b1 = SioClient::connect(addr_b, "/").await;
    let mut chat_b = SioClient::connect(addr_b, "/chat").await;
    warm_up(&io_a, &mut [&mut a1, &mut a2, &mut b1]).await;
    // Warm-ups still in flight arrive before what follows and are skipped.

    // A server-side emit on node A, many times: every socket of `/` on both nodes gets each
    // once, in order, and the other namespace nothing.
    const N: usize = 200;
    for i in 0..N {
        assert_eq!(io_a.emitter("/").unwrap().emit("all", vec![json!(i)]), 0);
    }
    io_a.emitter("/chat")
        .unwrap()
        .emit("chat-only", vec![json!("c")]);
    for c in [&mut a1, &mut a2, &mut b1] {
        for i in 0..N {
            assert_eq!(c.event().await, vec![json!("all"), json!(i)]);
        }
    }
    assert_eq!(chat_b.event().await, vec![json!("chat-only"), json!("c")]);

    // From a handler on node B (a client's event): everyone, the sender included.
    b1.emit("all", vec![json!("from b1")]).await;
    for c in [&mut a1, &mut a2, &mut b1] {
        assert_eq!(c.event().await, vec![json!("all"), json!("from b1")]);
    }

    // `socket.broadcast()`: everyone but the sender, on both nodes.
    a1.emit("others", vec![json!("from a1")]).await;
    for c in [&mut a2, &mut b1] {
        assert_eq!(c.event().await, vec![json!("others"), json!("from a1")]);
    }
    b1.emit("others", vec![json!("from b1")]).await;
    for c in [&mut a1, &mut a2] {
        assert_eq!(c.event().await, vec![json!("others"), json!("from b1")]);
    }

    // Binary attachments travel too.
    a2.emit("bin", vec![]).await;
    for c in [&mut a1, &mut a2, &mut b1] {
        let (array, bins) = c.event_within(WAIT).await.expect("the binary event");
        assert_eq!(array[0], json!("bin"));
        assert_eq!(array[1], json!("bytes"));
        assert_eq!(array[2], json!({"_placeholder": true, "num": 0}));
        assert_eq!(bins, vec![vec![0u8, 1, 2, 255]]);
    }

    // Nothing twice, nothing to the senders of `others`, nothing of `/` in `/chat`.
    for c in [&mut a1, &mut a2, &mut b1, &mut chat_b] {
        let extra = c.event_within(Duration::from_millis(500)).await;
        assert!(extra.is_none(), "{} got {extra:?}", c.sid);
    }
    node_a.shutdown().await;
    node_b.shutdown().await;
}
