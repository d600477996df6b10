//! Load tool for the echo example, built on `WsSocket` in the client role.
//!
//! - `load idle PORT N`: opens N connections, exchanges one message on each, then keeps them
//!   idle, prints `ready N` and waits until stdin closes. Used by `scripts/idle_memory.sh`.
//! - `load echo PORT CONNS MESSAGES SIZE`: on each of CONNS connections sends MESSAGES
//!   messages of SIZE bytes (pipelined, up to 64 in flight) and waits for their echoes; prints
//!   messages per second.
//!
//! Loopback only (127.0.0.1).

use std::time::Instant;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use switchboard_ws::{ClientHandshake, Message, WsConfig, WsSocket};
use tokio::net::TcpStream;

async fn connect(port: u16) -> anyhow::Result<WsSocket<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let config = WsConfig::default().max_message_size(16 << 20);
    let hs = ClientHandshake::new(&format!("127.0.0.1:{port}"), "/", &config);
    Ok(WsSocket::connect(tcp, &hs, config).await?)
}

async fn idle(port: u16, n: usize) -> anyhow::Result<()> {
    let mut sockets = Vec::with_capacity(n);
    let mut batch = tokio::task::JoinSet::new();
    let mut started = 0;
    while sockets.len() < n {
        while started < n && batch.len() < 100 {
            batch.spawn(async move {
                let mut ws = connect(port).await?;
                ws.send(Message::text("hello")).await?;
                match ws.recv().await? {
                    Some(Message::Text(_)) => Ok::<_, anyhow::Error>(ws),
                    other => bail!("unexpected {other:?}"),
                }
            });
            started += 1;
        }
        let ws = batch.join_next().await.context("join")???;
        sockets.push(ws);
    }
    println!("ready {}", sockets.len());
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink)
    })
    .await;
    for mut ws in sockets {
        ws.queue_close(1000, "");
        let _ = ws.flush().await;
    }
    Ok(())
}

async fn echo(port: u16, conns: usize, messages: usize, size: usize) -> anyhow::Result<()> {
    let payload = Bytes::from(vec![b'x'; size]);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let payload = payload.clone();
        tasks.spawn(async move {
            let mut ws = connect(port).await?;
            let (mut sent, mut received) = (0, 0);
            while received < messages {
                while sent < messages && sent - received < 64 {
                    ws.queue_message(&Message::Text(payload.clone()));
                    sent += 1;
                }
                ws.flush().await?;
                match ws.recv().await? {
                    Some(Message::Text(_)) => received += 1,
                    other => bail!("unexpected {other:?}"),
                }
            }
            ws.close(1000, "").await?;
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = start.elapsed().as_secs_f64();
    let total = conns * messages;
    println!(
        "echo: {conns} connections x {messages} messages of {size} B: {total} round trips in {secs:.2} s = {:.0} msg/s",
        total as f64 / secs
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> anyhow::Result<usize> {
        args.get(i)
            .context("missing argument")?
            .parse()
            .context("not a number")
    };
    match args.first().map(String::as_str) {
        Some("idle") => idle(num(1)? as u16, num(2)?).await,
        Some("echo") => echo(num(1)? as u16, num(2)?, num(3)?, num(4)?).await,
        _ => bail!("usage: load idle PORT N | load echo PORT CONNS MESSAGES SIZE"),
    }
}
