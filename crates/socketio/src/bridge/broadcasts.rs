//! Namespace-wide broadcasts of library mode: batched, in order, to every node (relay
//! messages), and delivered there to the node's own sockets.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use switchboard_hub::Hub;
use tokio::sync::mpsc;

/// Most namespace-wide broadcasts carried by one relay message.
const MAX_BROADCAST_BATCH: usize = 256;
/// Most bytes of broadcasts carried by one relay message (a larger broadcast goes alone): the
/// brokers' message size limits (NATS: 1 MiB by default) apply to the whole batch.
const MAX_BROADCAST_BATCH_BYTES: usize = 256 * 1024;

/// Namespace-wide broadcasts of library mode on their way to every node: queued in the order
/// they are made, and sent by one task, in that order, as relay messages to every node
/// ([`Hub::relay_all`], topic `socketio-broadcast` + the Engine.IO path), which deliver them to
/// their own sockets of the namespace. One relay message carries what queued up meanwhile (a
/// JSON array of broadcasts).
pub(super) struct Broadcasts {
    topic: String,
    queue: std::sync::OnceLock<mpsc::UnboundedSender<String>>,
}

impl Broadcasts {
    pub(super) fn new(path: &str) -> Arc<Self> {
        Arc::new(Self {
            topic: format!("socketio-broadcast{path}"),
            queue: std::sync::OnceLock::new(),
        })
    }

    /// The relay topic every node's bridge at this path listens on.
    pub(super) fn topic(&self) -> &str {
        &self.topic
    }

    /// Queues one broadcast (JSON text; the sending task starts with the first).
    pub(super) fn send(&self, hub: &Hub, item: String) {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(send_broadcasts(hub.clone(), self.topic.clone(), rx));
            tx
        });
        let _ = queue.send(item);
    }
}

/// Sends the queued broadcasts to every node, in order, until the bridge is gone.
async fn send_broadcasts(hub: Hub, topic: String, mut rx: mpsc::UnboundedReceiver<String>) {
    let mut queued = std::collections::VecDeque::new();
    let mut received = Vec::new();
    loop {
        if queued.is_empty() {
            if rx.recv_many(&mut received, MAX_BROADCAST_BATCH).await == 0 {
                return;
            }
        } else {
            while queued.len() + received.len() < MAX_BROADCAST_BATCH {
                match rx.try_recv() {
                    Ok(item) => received.push(item),
                    Err(_) => break,
                }
            }
        }
        queued.extend(received.drain(..));
        let mut data = String::from("[");
        let mut n = 0;
        while let Some(item) = queued.front() {
            if n == MAX_BROADCAST_BATCH
                || (n > 0 && data.len() + item.len() > MAX_BROADCAST_BATCH_BYTES)
            {
                break;
            }
            if n > 0 {
                data.push(',');
            }
            data.push_str(item);
            queued.pop_front();
            n += 1;
        }
        data.push(']');
        if let Err(e) = hub.relay_all(&topic, data).await {
            tracing::warn!(
                error = ?e,
                broadcasts = n,
                "socket.io: namespace broadcasts lost: the broker refused them"
            );
        }
    }
}

/// Delivers a batch of namespace-wide broadcasts (from any node) to this node's sockets.
pub(super) fn deliver_broadcasts(io: &crate::sio::SocketIo, data: &str) {
    use base64::Engine as _;
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(data) else {
        tracing::debug!("socket.io: malformed broadcast relay message");
        return;
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    for item in items {
        let (Some(nsp), Some(Value::Array(array))) =
            (item.get("nsp").and_then(Value::as_str), item.get("data"))
        else {
            continue;
        };
        let Some((Value::String(event), args)) = array.split_first() else {
            continue;
        };
        let bins = match item.get("bins") {
            Some(Value::Array(b)) => b
                .iter()
                .filter_map(|v| b64.decode(v.as_str()?).ok().map(Bytes::from))
                .collect(),
            _ => Vec::new(),
        };
        let packet = crate::sio::Packet::event(nsp, event, args.to_vec(), bins, None);
        let except = item.get("except").and_then(Value::as_str);
        io.deliver_remote(&packet, &[], except);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn broadcasts_reach_the_relay_in_order_in_bounded_batches() {
        let hub = Hub::new(
            switchboard_hub::HubConfig::default(),
            Arc::new(switchboard_hub::MemoryBroker::new()),
            "node".into(),
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        hub.on_relay(
            "socketio-broadcast/p/",
            Arc::new(move |data: String| {
                let _ = tx.send(data);
            }),
        );
        let broadcasts = Broadcasts::new("/p/");
        let big = "x".repeat(MAX_BROADCAST_BATCH_BYTES);
        let n = 2 * MAX_BROADCAST_BATCH + 10;
        for i in 0..n {
            let item = if i == 5 { json!([i, big]) } else { json!([i]) };
            broadcasts.send(&hub, item.to_string());
        }
        let mut seen = Vec::new();
        while seen.len() < n {
            let batch = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .expect("a batch in time")
                .expect("relay open");
            let items: Vec<Value> = serde_json::from_str(&batch).unwrap();
            assert!(items.len() <= MAX_BROADCAST_BATCH);
            assert!(items.len() == 1 || batch.len() <= MAX_BROADCAST_BATCH_BYTES + 2);
            seen.extend(items.iter().map(|v| v[0].as_u64().unwrap()));
        }
        assert_eq!(seen, (0..n as u64).collect::<Vec<_>>());
    }
}
