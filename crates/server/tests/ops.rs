//! Operations against a real server: `/health`, `/metrics` and graceful shutdown.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{eventually, http_get, metric, metric_value, metrics, start, Conn, TIMEOUT};
use switchboard_hub::NamespaceOptions;

#[tokio::test]
async fn health_is_200_json_with_status_ok() {
    let server = start(|_| {}).await;
    let response = http_get(server.addr(), "/health")
        .await
        .expect("GET /health");
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response
            .headers
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{response:?}"
    );
    let body: Value = serde_json::from_str(&response.body).expect("JSON body");
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["connections"], 0, "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_path_is_404() {
    let server = start(|_| {}).await;
    let response = http_get(server.addr(), "/no/such/thing").await.unwrap();
    assert_eq!(response.status, 404, "{response:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn metrics_count_connections_commands_and_errors() {
    let server = start(|c| {
        let mut closed = NamespaceOptions::default();
        closed.name = "closed".into();
        c.channel.namespaces.push(closed);
    })
    .await;
    let addr = server.addr();

    let text = metrics(addr).await;
    assert!(
        text.contains("# TYPE switchboard_connections gauge"),
        "{text}"
    );
    assert_eq!(metric_value(&text, "switchboard_connections"), 0.0);
    let subscribes = "switchboard_commands_total{method=\"subscribe\"}";
    let permission_denied = "switchboard_errors_total{code=\"103\",message=\"permission denied\"}";
    assert_eq!(metric_value(&text, subscribes), 0.0);
    assert_eq!(metric_value(&text, permission_denied), 0.0);

    let mut a = Conn::connected(addr).await;
    let mut b = Conn::connected(addr).await;
    a.subscribe("news").await;
    let text = metrics(addr).await;
    assert_eq!(metric_value(&text, "switchboard_connections"), 2.0);
    assert_eq!(metric_value(&text, subscribes), 1.0);
    assert_eq!(
        metric_value(&text, "switchboard_commands_total{method=\"connect\"}"),
        2.0
    );
    assert_eq!(metric_value(&text, "switchboard_subscriptions"), 1.0);
    assert_eq!(metric_value(&text, "switchboard_channels"), 1.0);

    b.subscribe("news").await;
    b.subscribe("sport").await;
    assert_eq!(
        b.request_error(json!({"subscribe": {"channel": "closed:1"}}))
            .await,
        103
    );
    let text = metrics(addr).await;
    // The refused subscribe is a subscribe command too.
    assert_eq!(metric_value(&text, subscribes), 4.0);
    assert_eq!(metric_value(&text, permission_denied), 1.0);
    assert_eq!(metric_value(&text, "switchboard_subscriptions"), 3.0);
    assert_eq!(metric_value(&text, "switchboard_channels"), 2.0);

    a.publish("news", json!("x")).await;
    let text = metrics(addr).await;
    assert_eq!(
        metric_value(&text, "switchboard_commands_total{method=\"publish\"}"),
        1.0
    );
    assert!(
        metric(&text, "switchboard_publications_total").is_some(),
        "{text}"
    );

    // Closing a connection releases its gauge entries.
    drop(a);
    let released = eventually(TIMEOUT, || async {
        let text = metrics(addr).await;
        metric_value(&text, "switchboard_connections") == 1.0
            && metric_value(&text, "switchboard_subscriptions") == 2.0
    })
    .await;
    assert!(released, "{}", metrics(addr).await);
    b.assert_alive().await;
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_every_client_with_3001() {
    let server = start(|_| {}).await;
    let addr = server.addr();
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut conn = Conn::connected(addr).await;
        conn.subscribe(&format!("room{i}")).await;
        clients.push(conn);
    }

    let hub = server.hub().clone();
    let shutdown = tokio::spawn(server.shutdown());
    for conn in &mut clients {
        assert_eq!(conn.expect_close(3001, TIMEOUT).await, "shutdown");
    }
    // Clients that answer the close let the drain finish quickly.
    tokio::time::timeout(TIMEOUT, shutdown)
        .await
        .expect("shutdown did not finish")
        .unwrap();
    assert!(hub.is_shutting_down());
    assert_eq!(hub.metrics().connections(), 0);
    // The listener is closed afterwards.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting connections after shutdown"
    );
}

/// A connection that has not sent `connect` yet is told too, and does not hold up the drain
/// until its handshake timeout.
#[tokio::test]
async fn shutdown_closes_handshaking_clients_with_3001() {
    let server = start(|c| {
        c.client.handshake_timeout = Duration::from_secs(30);
        c.shutdown.drain_timeout = Duration::from_secs(10);
    })
    .await;
    let mut conn = Conn::open(server.addr()).await;
    // Make sure the server has accepted the connection before shutting down.
    assert!(
        eventually(TIMEOUT, || async {
            server.hub().metrics().connections() == 1
        })
        .await
    );
    let shutdown = tokio::spawn(server.shutdown());
    assert_eq!(conn.expect_close(3001, TIMEOUT).await, "shutdown");
    tokio::time::timeout(TIMEOUT, shutdown)
        .await
        .expect("shutdown waited for the handshaking client")
        .unwrap();
}

/// While the node drains, its listener stays open: `/health` answers 503 (load balancers take
/// the node out of rotation) and a new WebSocket client is closed with 3001 (reconnect
/// elsewhere) instead of being refused at the TCP level. The listener closes after the drain.
#[tokio::test]
async fn during_drain_health_is_503_and_new_clients_get_3001() {
    let server = start(|c| c.shutdown.drain_timeout = Duration::from_secs(3)).await;
    let addr = server.addr();
    // This client never reads, so the drain has to wait for it.
    let _stuck = Conn::connected(addr).await;
    let hub = server.hub().clone();
    let started = Instant::now();
    let shutdown = tokio::spawn(server.shutdown());
    assert!(
        eventually(TIMEOUT, || async { hub.is_shutting_down() }).await,
        "shutdown did not start"
    );
    let response = http_get(addr, "/health")
        .await
        .expect("the listener stays open during the drain");
    assert_eq!(response.status, 503, "{response:?}");
    let body: Value = serde_json::from_str(&response.body).expect("JSON body");
    assert_eq!(body["status"], "shutting_down", "{body}");
    // New WebSocket connections are told to go elsewhere.
    let (ws, _) = tokio::time::timeout(
        TIMEOUT,
        tokio_tungstenite::connect_async(support::ws_url(addr)),
    )
    .await
    .expect("upgrade during the drain timed out")
    .expect("upgrade during the drain");
    let mut late = Conn::from_ws(ws);
    assert_eq!(late.expect_close(3001, TIMEOUT).await, "shutdown");
    // The drain is bounded by its timeout even when a client does not cooperate.
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown did not finish after the drain timeout")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting connections after the drain"
    );
}
