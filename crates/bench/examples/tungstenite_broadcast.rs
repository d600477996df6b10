//! The "no features" floor for `scripts/bench/compare`: a plain tokio-tungstenite server
//! that broadcasts every text frame it receives to every other connected client.
//!
//! `cargo run --release -p switchboard-bench --example tungstenite_broadcast -- 127.0.0.1:8300`
//!
//! Tuned the way a careful user would: a 4 KiB read buffer (tungstenite's default 128 KiB
//! per connection dominates idle memory otherwise), one bounded queue per connection, and a
//! writer task that feeds everything queued before flushing once (coalesced writes). A client
//! whose queue is full is disconnected, like Switchboard's slow-client policy. No channels,
//! no protocol, no auth: what a broadcast costs with nothing else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Messages queued per client before it counts as too slow.
const QUEUE: usize = 4096;

type Clients = Arc<Mutex<HashMap<u64, mpsc::Sender<Message>>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8300".into())
        .parse()?;
    let listener = TcpListener::bind(addr).await?;
    eprintln!("tungstenite_broadcast listening on {addr}");
    let clients: Clients = Arc::default();
    let ids = AtomicU64::new(0);
    loop {
        let (stream, _) = listener.accept().await?;
        let id = ids.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve(stream, id, clients.clone()));
    }
}

async fn serve(stream: TcpStream, id: u64, clients: Clients) {
    let _ = stream.set_nodelay(true);
    // tungstenite's write buffer (128 KiB by default) only fills while a batch is fed and
    // is what coalesces the batch into few writes; the read buffer is allocated up front.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    clients
        .lock()
        .expect("no panics while holding the lock")
        .insert(id, tx);
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(64);
        while rx.recv_many(&mut batch, 256).await > 0 {
            for m in batch.drain(..) {
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = source.next().await {
        if let Message::Text(text) = msg {
            let mut slow = Vec::new();
            {
                let map = clients.lock().expect("no panics while holding the lock");
                for (&other, tx) in map.iter() {
                    if other != id && tx.try_send(Message::Text(text.clone())).is_err() {
                        slow.push(other);
                    }
                }
            }
            if !slow.is_empty() {
                let mut map = clients.lock().expect("no panics while holding the lock");
                for s in slow {
                    map.remove(&s);
                }
            }
        }
    }
    clients
        .lock()
        .expect("no panics while holding the lock")
        .remove(&id);
    writer.abort();
}
