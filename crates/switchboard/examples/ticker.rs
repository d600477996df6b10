//! Publishing from a background task: a ticker publishes `{"tick": n}` into channel `ticker`
//! every TICK_MS milliseconds (1000 by default) while the node serves clients.
//!
//! Run: `cargo run -p switchboard --example ticker`, then subscribe a client to `ticker`.

use std::time::Duration;

use serde::Serialize;
use switchboard::Node;

#[derive(Serialize)]
struct Tick {
    tick: u64,
}

/// Publishes a tick into `ticker` every `every`, for as long as the node lives.
pub(crate) fn spawn_ticker(node: Node, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        for tick in 1.. {
            interval.tick().await;
            if let Err(e) = node.publish_json("ticker", &Tick { tick }).await {
                eprintln!("tick {tick} not published: {e}");
            }
        }
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:8000".into());
    let every = std::env::var("TICK_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(1000);
    let node = Node::builder().build().await?;
    spawn_ticker(node.clone(), Duration::from_millis(every));
    let server = node.start(addr.parse()?).await?;
    println!("listening on http://{}", server.addr());
    server.run_until(switchboard::shutdown_signal()).await;
    Ok(())
}
