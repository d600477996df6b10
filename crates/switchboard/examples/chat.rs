//! A chat server in an axum app: rooms (`room:<name>`), nicknames checked when connecting,
//! messages validated (and stamped with the nickname) when published. The realtime endpoint is
//! nested under `/realtime` next to the app's own routes.
//!
//! Run: `cargo run -p switchboard --example chat` (ADDR=127.0.0.1:3000 by default), then connect
//! a `centrifuge` client to `ws://127.0.0.1:3000/realtime/connection/websocket` with
//! `data: {"nick": "alice"}` and subscribe to `room:lobby`.

use std::net::SocketAddr;

use axum::{routing::get, Json, Router};
use serde::Deserialize;
use switchboard::{ConnectReply, ErrorCode, Node, PublishReply, Rejection, SubscribeReply};

#[derive(Deserialize)]
struct Hello {
    nick: String,
}

#[derive(Deserialize)]
struct Message {
    text: String,
}

/// The chat node and the app around it.
pub(crate) async fn app() -> anyhow::Result<(Router, Node)> {
    let node = Node::builder()
        .on_connect(|_ctx, req| async move {
            let hello: Hello = req.data.ok_or(ErrorCode::UNAUTHORIZED)?.decode()?;
            let valid = (1..=20).contains(&hello.nick.len())
                && hello.nick.chars().all(|c| c.is_ascii_alphanumeric());
            if !valid {
                return Err(Rejection::error(
                    4000,
                    "nickname: 1 to 20 letters or digits",
                ));
            }
            Ok(ConnectReply::user(hello.nick))
        })
        .on_subscribe(|_ctx, req| async move {
            match req.channel.strip_prefix("room:") {
                Some(room) if !room.is_empty() => Ok(SubscribeReply::accept()),
                _ => Err(ErrorCode::PERMISSION_DENIED.into()),
            }
        })
        .on_publish(|ctx, req| async move {
            let message: Message = req.data.decode()?;
            let text = message.text.trim();
            if text.is_empty() || text.len() > 500 {
                return Err(Rejection::error(4001, "a message has 1 to 500 characters"));
            }
            let stamped = serde_json::json!({"nick": ctx.user(), "text": text});
            Ok(PublishReply::replace(switchboard::Data::json(&stamped)?))
        })
        .build()
        .await?;
    let rooms = node.clone();
    let app = Router::new()
        .route(
            "/",
            get(|| async { "chat: connect to /realtime/connection/websocket\n" }),
        )
        .route("/rooms", get(move || async move { Json(rooms.channels()) }))
        .nest("/realtime", node.router());
    Ok((app, node))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let (app, _node) = app().await?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service).await?;
    Ok(())
}
