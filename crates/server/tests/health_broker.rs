//! `/health` reports an unreachable broker with 503, so load balancers send clients elsewhere.

mod support;

use std::time::Duration;

use switchboard_http::config::BrokerKind;

#[tokio::test]
async fn health_is_503_while_the_broker_is_unreachable() {
    let port = support::closed_port();
    let server = support::start(|c| {
        c.broker.kind = BrokerKind::Redis;
        c.broker.redis.addresses = vec![format!("redis://127.0.0.1:{port}")];
        c.broker.redis.prefix = format!("sbhealth{port}");
        c.broker.redis.connect_timeout = Duration::from_millis(200);
    })
    .await;
    let response = support::http_get(server.addr(), "/health").await.unwrap();
    assert_eq!(response.status, 503, "{}", response.body);
    assert!(
        response.body.contains("\"broker_unavailable\""),
        "{}",
        response.body
    );
    assert!(
        response.body.contains("\"broker_connected\":false"),
        "{}",
        response.body
    );
}

#[tokio::test]
async fn health_is_200_with_the_memory_broker() {
    let server = support::start(|_| {}).await;
    let response = support::http_get(server.addr(), "/health").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response.body.contains("\"broker_connected\":true"),
        "{}",
        response.body
    );
}
