//! The client against the real server (`switchboard_http::Server`, development config, an
//! ephemeral port).

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::json;
use switchboard_client::{Backoff, Client, ClientError, ClientEvent, SubscriptionEvent};
use switchboard_http::config::Config;
use switchboard_http::Server;
use switchboard_proto::DisconnectCode;
use tokio::sync::broadcast;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

async fn start(tweak: impl FnOnce(&mut Config)) -> Result<(Server, String)> {
    let mut config = Config::development();
    config.address = "127.0.0.1:0".parse()?;
    tweak(&mut config);
    let server = Server::start(config).await?;
    let url = format!("ws://{}/connection/websocket", server.addr());
    Ok((server, url))
}

fn fast_backoff() -> Backoff {
    Backoff {
        min: Duration::from_millis(20),
        max: Duration::from_millis(200),
        jitter: true,
    }
}

async fn next_event(events: &mut broadcast::Receiver<ClientEvent>) -> Result<ClientEvent> {
    Ok(timeout(WAIT, events.recv()).await??)
}

#[tokio::test]
async fn one_publishes_the_other_receives() -> Result<()> {
    let (server, url) = start(|_| {}).await?;
    let a = Client::builder(&url).name("rust-test").connect().await?;
    let b = Client::builder(&url).connect().await?;
    assert!(!a.id().is_empty());
    assert_ne!(a.id(), b.id());

    let mut sub = a.subscribe("chat:index").await?;
    b.publish("chat:index", json!({"text": "hello"})).await?;
    let p = timeout(WAIT, sub.recv())
        .await?
        .context("subscription ended")?;
    assert_eq!(p.value(), json!({"text": "hello"}));

    // Many publications arrive in order (and travel in batched frames).
    for i in 0..100 {
        b.publish("chat:index", json!(i)).await?;
    }
    for i in 0..100 {
        let p = timeout(WAIT, sub.recv())
            .await?
            .context("subscription ended")?;
        assert_eq!(p.json::<i32>()?, i);
    }
    a.disconnect().await;
    b.disconnect().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn reconnects_after_force_reconnect_and_resubscribes() -> Result<()> {
    let (server, url) = start(|_| {}).await?;
    let a = Client::builder(&url)
        .reconnect(fast_backoff())
        .connect()
        .await?;
    let b = Client::builder(&url).connect().await?;
    let mut events = a.events();
    let mut sub = a.subscribe("chat:reconnect").await?;
    assert!(matches!(
        timeout(WAIT, sub.recv_event()).await?,
        Some(SubscriptionEvent::Subscribed { .. })
    ));
    let first_id = a.id();
    assert!(server
        .hub()
        .disconnect_client(&first_id, DisconnectCode::FORCE_RECONNECT));
    match next_event(&mut events).await? {
        ClientEvent::Disconnected {
            code, reconnect, ..
        } => assert_eq!((code, reconnect), (3011, true)),
        other => bail!("unexpected {other:?}"),
    }
    assert!(matches!(
        next_event(&mut events).await?,
        ClientEvent::Connected { .. }
    ));
    assert_ne!(a.id(), first_id);
    // The subscription is restored...
    assert!(matches!(
        timeout(WAIT, sub.recv_event()).await?,
        Some(SubscriptionEvent::Subscribed { .. })
    ));
    // ...and live.
    b.publish("chat:reconnect", json!("after")).await?;
    let p = timeout(WAIT, sub.recv())
        .await?
        .context("subscription ended")?;
    assert_eq!(p.value(), json!("after"));
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn no_reconnect_disconnect_ends_the_client() -> Result<()> {
    let (server, url) = start(|_| {}).await?;
    let a = Client::builder(&url)
        .reconnect(fast_backoff())
        .connect()
        .await?;
    let mut events = a.events();
    let mut sub = a.subscribe("chat:x").await?;
    assert!(server
        .hub()
        .disconnect_client(&a.id(), DisconnectCode::FORCE_NO_RECONNECT));
    match next_event(&mut events).await? {
        ClientEvent::Disconnected {
            code, reconnect, ..
        } => assert_eq!((code, reconnect), (3503, false)),
        other => bail!("unexpected {other:?}"),
    }
    while timeout(WAIT, sub.recv_event()).await?.is_some() {}
    let err = a.publish("chat:x", json!(1)).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Disconnected { code: 3503, .. }),
        "{err:?}"
    );
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn server_error_codes_reach_the_caller() -> Result<()> {
    let (server, url) = start(|c| c.client.max_channels = 1).await?;
    let a = Client::builder(&url).connect().await?;
    let _one = a.subscribe("chat:one").await?;
    let err = a.subscribe("chat:two").await.unwrap_err();
    assert!(err.is_server_code(106), "{err:?}");
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn answers_server_pings() -> Result<()> {
    let (server, url) = start(|c| {
        c.client.ping_interval = Duration::from_millis(300);
        c.client.pong_timeout = Duration::from_millis(300);
    })
    .await?;
    let a = Client::builder(&url).connect().await?;
    let mut events = a.events();
    let mut sub = a.subscribe("chat:ping").await?;
    // Several ping intervals pass without a disconnect for "no pong".
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        matches!(
            events.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ),
        "the connection should have stayed up"
    );
    a.publish("chat:ping", json!("still here")).await?;
    let p = timeout(WAIT, sub.recv())
        .await?
        .context("subscription ended")?;
    assert_eq!(p.value(), json!("still here"));
    server.shutdown().await;
    Ok(())
}
