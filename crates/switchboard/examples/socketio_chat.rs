//! Socket.IO with library semantics: a Rust program registers namespaces and typed event
//! handlers, and its rooms are hub channels (native clients, the server API and other nodes
//! meet there).
//!
//! - `/`: `join` (room) joins and acks `{"joined": room}`; `say` ({room, text}) emits `said` to
//!   everyone else in the room; `echo` acks with its arguments; `ask` asks the client back
//!   (`question`, with an ack) and emits `answer` with the client's reply; `announce` emits
//!   `announced` with its arguments to every socket of `/` (`io.emitter`), `shout` emits
//!   `shouted` to every other socket of `/` (`socket.broadcast()`), on every node.
//!
//! Run: `ADDR=127.0.0.1:3000 cargo run -p switchboard --example socketio_chat` (anonymous
//! clients allowed; no `[socketio]` built-ins). With `REDIS_PREFIX=app` (and `REDIS_URL`,
//! default `redis://127.0.0.1:6379`) the node uses Redis, so several of them make one cluster.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use switchboard::socketio::{Payload, SioConfig, SocketIo};
use switchboard::{Broker, Config, Node};

#[derive(Deserialize)]
struct Say {
    room: String,
    text: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = Config::development();
    config.socketio.enabled = false; // the built-in semantics stay off: ours are served
    let mut builder = Node::builder().config(config);
    if let Ok(prefix) = std::env::var("REDIS_PREFIX") {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        builder = builder.broker(Broker::redis(&url, &prefix));
    }
    let node = builder.build().await?;

    let io = SocketIo::new(SioConfig::default());
    let everyone = io.clone();
    io.ns("/", move |h| {
        h.on_typed("join", |socket, room: String, ack| {
            socket.join(&room);
            if let Some(ack) = ack {
                ack.send(vec![json!({ "joined": room })]);
            }
        });
        h.on_typed("say", |socket, say: Say, _ack| {
            socket
                .to(&say.room)
                .emit("said", vec![json!(socket.id()), json!(say.text)]);
        });
        h.on("echo", |_socket, data, ack| {
            if let Some(ack) = ack {
                ack.send_payload(data);
            }
        });
        h.on_async("ask", |socket, data: Payload, _ack| async move {
            match socket
                .emit_with_ack("question", data, Duration::from_secs(5))
                .await
            {
                Ok(reply) => socket.emit_payload("answer", reply),
                Err(e) => socket.emit("answer", vec![json!({ "error": e.to_string() })]),
            };
        });
        h.on("announce", move |_socket, data, _ack| {
            if let Some(all) = everyone.emitter("/") {
                all.emit_payload("announced", data);
            }
        });
        h.on("shout", |socket, data, _ack| {
            socket.broadcast().emit_payload("shouted", data);
        });
    });

    let app = node.router().merge(node.socketio(&io));
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .await?;
    Ok(())
}
