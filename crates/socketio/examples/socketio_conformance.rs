//! The server the official Engine.IO and Socket.IO protocol test suites expect
//! (`socketio/engine.io-protocol` and `socketio/socket.io-protocol`, folder `test-suite/`).
//!
//! - `/engine.io/`: raw Engine.IO, every message echoed back to its sender.
//! - `/socket.io/`: Socket.IO with namespaces `/` and `/custom`; on connection the server emits
//!   `auth` with the CONNECT payload; on `/`, `message` is answered with `message-back` and the
//!   same arguments, `message-with-ack` is acknowledged with its arguments, and `emit-with-ack`
//!   is emitted back with an ack request whose answer is emitted as `emit-with-ack` again.
//!
//! pingInterval 300 ms, pingTimeout 200 ms, maxPayload 1e6, connectTimeout 1 s, CORS any origin.
//!
//! Run: `cargo run -p switchboard-socketio --example socketio_conformance [-- --port 3000]`.

use std::sync::Arc;
use std::time::Duration;

use switchboard_socketio::engine::{Engine, EngineConfig, EngineHandler, EngineSocket, Incoming};
use switchboard_socketio::sio::{Payload, SioConfig, SocketIo};

/// Echoes every message of every session.
struct Echo;

impl EngineHandler for Echo {
    fn on_open(&self, socket: EngineSocket, mut incoming: Incoming) {
        tokio::spawn(async move {
            while let Some(data) = incoming.recv().await {
                socket.send(data);
            }
            incoming.shutdown().await;
        });
    }
}

fn engine_config() -> EngineConfig {
    EngineConfig::default()
        .ping_interval(Duration::from_millis(300))
        .ping_timeout(Duration::from_millis(200))
        .max_payload(1_000_000)
        .cors_origins(vec!["*".into()])
}

/// The Socket.IO server of the suite.
fn socket_io() -> SocketIo {
    let mut config = SioConfig::default();
    config.connect_timeout = Duration::from_millis(1000);
    let io = SocketIo::new(config);
    io.ns("/", |h| {
        h.on_connection(|socket, auth| {
            socket.emit("auth", vec![auth]);
        });
        h.on("message", |socket, data, _ack| {
            socket.emit_payload("message-back", data);
        });
        h.on("message-with-ack", |_socket, data, ack| {
            if let Some(ack) = ack {
                ack.send_payload(data);
            }
        });
        h.on_async("emit-with-ack", |socket, data: Payload, _ack| async move {
            if let Ok(reply) = socket
                .emit_with_ack("emit-with-ack", data, Duration::from_secs(5))
                .await
            {
                socket.emit_payload("emit-with-ack", reply);
            }
        });
    });
    io.ns("/custom", |h| {
        h.on_connection(|socket, auth| {
            socket.emit("auth", vec![auth]);
        });
    });
    io
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut port: u16 = 3000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--port" || arg == "-p" {
            port = args.next().unwrap_or_default().parse()?;
        }
    }
    let engine_io = Engine::new(engine_config(), Arc::new(Echo));
    let sio = socket_io().engine(engine_config());
    let app =
        SocketIo::router(engine_io, "/engine.io/").merge(SocketIo::router(sio, "/socket.io/"));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!(addr = %listener.local_addr()?, "socket.io conformance server listening");
    axum::serve(listener, app).await?;
    Ok(())
}
