//! Polling requests routed between nodes over the hub's broker: no sticky sessions.
//!
//! A session id ends with `.` and the id of the node that holds the session. A polling request
//! (GET or POST) that reaches another node is sent to the owner as a relay message
//! ([`Hub::relay`], topic `socketio` + the engine's path); the owner serves it as if it had
//! arrived there and relays the answer back, which the first node returns to the client.
//! WebSocket requests cannot travel that way: a WebSocket upgrade for a session of another node
//! gets 400 and the client keeps polling (a direct WebSocket connection needs no routing).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use switchboard_hub::Hub;
use tokio::sync::oneshot;

use crate::engine::server::{Cluster, ForwardedRequest, ForwardedResponse};
use crate::engine::Engine;

/// How long a forwarded POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Message {
    Req {
        id: u64,
        from: String,
        req: ForwardedRequest,
    },
    Resp {
        id: u64,
        resp: ForwardedResponse,
    },
}

/// [`Cluster`] over a hub's broker.
pub struct HubCluster {
    hub: Hub,
    topic: String,
    node: String,
    poll_timeout: Duration,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<ForwardedResponse>>>>,
    next: AtomicU64,
}

impl std::fmt::Debug for HubCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubCluster")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl HubCluster {
    /// Joins `engine` (served at `path`) to the cluster of `hub`'s nodes.
    pub fn install(hub: &Hub, engine: &Engine, path: &str) {
        let config = engine.config();
        let cluster = Arc::new(HubCluster {
            hub: hub.clone(),
            topic: format!("socketio{path}"),
            node: hub.node().id.clone(),
            // A poll waits at most until the next ping.
            poll_timeout: config.ping_interval + config.ping_timeout + Duration::from_secs(5),
            pending: Arc::default(),
            next: AtomicU64::new(1),
        });
        engine.set_cluster(cluster.clone());
        let weak_engine = engine.downgrade();
        let weak = Arc::downgrade(&cluster);
        hub.on_relay(
            &cluster.topic,
            Arc::new(move |data: String| {
                let Some(cluster) = weak.upgrade() else {
                    return;
                };
                match serde_json::from_str::<Message>(&data) {
                    Ok(Message::Resp { id, resp }) => {
                        if let Some(tx) = cluster.pending.lock().remove(&id) {
                            let _ = tx.send(resp);
                        }
                    }
                    Ok(Message::Req { id, from, req }) => {
                        let Some(engine) = weak_engine.upgrade() else {
                            return;
                        };
                        tokio::spawn(async move {
                            let resp = engine.serve_forwarded(req).await;
                            let msg = serde_json::to_string(&Message::Resp { id, resp })
                                .expect("serialisable");
                            if let Err(e) = cluster.hub.relay(&from, &cluster.topic, msg).await {
                                tracing::debug!(error = ?e, "socket.io: relaying an answer failed");
                            }
                        });
                    }
                    Err(e) => tracing::debug!(error = %e, "socket.io: bad relay message"),
                }
            }),
        );
    }
}

impl Cluster for HubCluster {
    fn node_id(&self) -> &str {
        &self.node
    }

    fn forward(
        &self,
        node: &str,
        req: ForwardedRequest,
    ) -> Pin<Box<dyn Future<Output = Option<ForwardedResponse>> + Send>> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        let timeout = if req.post {
            POST_TIMEOUT
        } else {
            self.poll_timeout
        };
        let msg = serde_json::to_string(&Message::Req {
            id,
            from: self.hub.node().id.clone(),
            req,
        })
        .expect("serialisable");
        let hub = self.hub.clone();
        let topic = self.topic.clone();
        let node = node.to_owned();
        let pending = self.pending.clone();
        Box::pin(async move {
            let answer = match hub.relay(&node, &topic, msg).await {
                Ok(()) => tokio::time::timeout(timeout, rx)
                    .await
                    .ok()
                    .and_then(Result::ok),
                Err(_) => None,
            };
            if answer.is_none() {
                pending.lock().remove(&id);
            }
            answer
        })
    }
}
