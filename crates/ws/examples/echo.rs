//! WebSocket echo server on exactly the stack the Switchboard server uses: axum 0.8 + hyper
//! upgrade + `switchboard_ws::WsSocket`. Used for the Autobahn conformance suite.
//!
//! Run: `cargo run --release -p switchboard-ws --example echo -- --port 9001`
//! (or `... --example echo -- 9001`); listens on 127.0.0.1, any path.

use std::future::poll_fn;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use axum::Router;
use hyper_util::rt::TokioIo;
use switchboard_ws::{validate_upgrade, Role, WsConfig, WsSocket};
use tokio::io::{AsyncRead, AsyncWrite};

fn config() -> WsConfig {
    // Autobahn 9.* sends messages up to 16 MiB.
    WsConfig::default()
        .max_message_size(16 << 20)
        .compression(true)
}

async fn upgrade(mut req: Request) -> Response {
    let config = config();
    let info = match validate_upgrade(req.headers(), req.method(), &config) {
        Ok(info) => info,
        Err(e) => {
            return (
                e.status_code(),
                [(header::SEC_WEBSOCKET_VERSION, "13")],
                e.to_string(),
            )
                .into_response()
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let deflate = info.deflate;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                echo(WsSocket::with_deflate(io, Role::Server, config, deflate)).await;
            }
            Err(e) => eprintln!("upgrade failed: {e}"),
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = info.response_headers();
    resp
}

/// Echoes every text and binary message; pings and closes are answered by the socket.
async fn echo<IO: AsyncRead + AsyncWrite + Unpin>(mut ws: WsSocket<IO>) {
    let mut batch = Vec::new();
    loop {
        let read = poll_fn(|cx| ws.poll_read_messages(cx, &mut batch)).await;
        for msg in batch.drain(..) {
            if msg.is_data() {
                ws.queue_message(&msg);
            }
        }
        if read.is_err() || ws.flush().await.is_err() || ws.is_close_received() {
            break;
        }
    }
    // Sends the queued close (echo, or the one for a protocol error), then hangs up.
    let _ = ws.close(1000, "").await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut port: u16 = 9001;
    while let Some(arg) = args.next() {
        port = match arg.as_str() {
            "--port" | "-p" => args.next().unwrap_or_default().parse()?,
            other => other.parse()?,
        };
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("echo listening on ws://{}", listener.local_addr()?);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, Router::new().fallback(upgrade)).await?;
    Ok(())
}
