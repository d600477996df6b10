//! Library-mode Socket.IO: the room emits of one sender (`socket.to(room).emit`, and the
//! emits of a node's `io.emitter(ns).to(room)`) reach the room's members in the order they
//! were made, also when many are made at once. The clients speak Socket.IO v5 over an
//! Engine.IO WebSocket, written out here.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::socketio::{SioConfig, SocketIo};
use switchboard::{Config, Node};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(10);
/// Emits per burst.
const BURST: u64 = 500;

/// A node (memory broker) serving a Socket.IO app: `join` joins a room (ack `{}`), `warm`
/// emits `warm` into the room, `burst` emits `n` with 0, 1, ... into the room from the socket
/// (`socket.to`), `burst-io` the same from the node's emitter (`io.emitter("/").to`).
async fn node() -> (SocketAddr, Node) {
    let mut config = Config::development();
    config.socketio.enabled = false; // the built-in semantics stay off: ours are served
    let node = Node::builder().config(config).build().await.unwrap();
    let io = SocketIo::new(SioConfig::default());
    let handle = io.clone();
    io.ns("/", move |h| {
        h.on_typed("join", |socket, room: String, ack| {
            socket.join(&room);
            if let Some(ack) = ack {
                ack.send(vec![json!({})]);
            }
        });
        h.on_typed("warm", |socket, room: String, _ack| {
            socket.to(&room).emit("warm", vec![]);
        });
        h.on_typed("burst", |socket, room: String, _ack| {
            for i in 0..BURST {
                socket.to(&room).emit("n", vec![json!(i)]);
            }
        });
        let io = handle.clone();
        h.on_typed("burst-io", move |_socket, room: String, _ack| {
            let emitter = io.emitter("/").expect("namespace /").to(&room);
            for i in 0..BURST {
                emitter.emit("n", vec![json!(i)]);
            }
        });
    });
    let app = node.router().merge(node.socketio(&io));
    let addr = common::serve(app).await;
    (addr, node)
}

/// A Socket.IO client of `/` over a WebSocket.
struct SioClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl SioClient {
    async fn connect(addr: SocketAddr) -> Self {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut c = Self { ws };
        let open = c.text().await;
        assert!(open.starts_with('0'), "{open}");
        c.send("40".into()).await;
        let reply = c.text().await;
        assert!(reply.starts_with("40{\"sid\""), "CONNECT reply: {reply}");
        c
    }

    async fn send(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The next text frame (answering pings); `None` when none arrives within `wait`.
    async fn text_within(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?
                .expect("socket open")
                .unwrap();
            if let Message::Text(t) = frame {
                if t.as_str() == "2" {
                    self.send("3".into()).await;
                    continue;
                }
                return Some(t.as_str().to_owned());
            }
        }
    }

    async fn text(&mut self) -> String {
        self.text_within(WAIT).await.expect("a frame in time")
    }

    async fn emit(&mut self, event: &str, args: Vec<Value>) {
        let mut array = vec![json!(event)];
        array.extend(args);
        self.send(format!("42{}", Value::Array(array))).await;
    }

    /// Joins `room` and waits for the ack.
    async fn join(&mut self, room: &str) {
        self.send(format!("421{}", json!(["join", room]))).await;
        loop {
            let t = self.text().await;
            if t.starts_with("431") {
                return;
            }
        }
    }
}

/// Emits `warm` into `room` from `sender` until `receiver` got one: the receiver's
/// subscription is then in place.
async fn warm_up(sender: &mut SioClient, receiver: &mut SioClient, room: &str) {
    tokio::time::timeout(WAIT, async {
        loop {
            sender.emit("warm", vec![json!(room)]).await;
            while let Some(t) = receiver.text_within(Duration::from_millis(200)).await {
                if t.starts_with("42[\"warm\"") {
                    return;
                }
            }
        }
    })
    .await
    .expect("the receiver's subscription is in place");
}

/// The `n` events of one burst at `receiver`: every one, in order.
async fn check_burst(receiver: &mut SioClient) {
    let mut seen = Vec::new();
    while (seen.len() as u64) < BURST {
        let t = receiver.text().await;
        if t.starts_with("42[\"warm\"") {
            continue; // a late warm-up emit
        }
        let array: Value = serde_json::from_str(t.strip_prefix("42").expect("an event")).unwrap();
        assert_eq!(array[0], json!("n"), "{t}");
        seen.push(array[1].as_u64().unwrap());
    }
    let first_wrong = seen.iter().zip(0..).position(|(n, i)| *n != i);
    assert_eq!(
        first_wrong,
        None,
        "room emits arrived out of order: {:?}",
        &seen[first_wrong.unwrap_or(0)..][..10.min(seen.len() - first_wrong.unwrap_or(0))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_senders_room_emits_arrive_in_order() {
    let (addr, _node) = node().await;
    let mut receiver = SioClient::connect(addr).await;
    let mut sender = SioClient::connect(addr).await;
    receiver.join("ordered").await;
    warm_up(&mut sender, &mut receiver, "ordered").await;

    sender.emit("burst", vec![json!("ordered")]).await;
    check_burst(&mut receiver).await;

    sender.emit("burst-io", vec![json!("ordered")]).await;
    check_burst(&mut receiver).await;
}
