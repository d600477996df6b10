//! Redis going away and coming back: calls fail fast with `Unavailable`, the broker reconnects,
//! resubscribes and reports a gap for every subscribed channel.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use support::{eventually, started, RedisServer};
use switchboard_broker_redis::RedisBroker;
use switchboard_hub::{Broker, BrokerError, HistoryFilter, PresenceStore, PublishOptions};
use switchboard_proto::{ClientInfo, Publication};

fn publication(n: usize) -> Publication {
    Publication {
        data: RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap(),
        info: None,
        offset: 0,
        tags: HashMap::new(),
    }
}

fn history_options() -> PublishOptions {
    let mut o = PublishOptions::default();
    o.history_size = 10;
    o.history_ttl = Duration::from_secs(60);
    o.history_meta_ttl = Duration::from_secs(600);
    o
}

fn info() -> ClientInfo {
    ClientInfo {
        user: "u".into(),
        client: "c".into(),
        conn_info: None,
        chan_info: None,
    }
}

/// Runs every kind of call that needs Redis and checks each fails with `Unavailable` within
/// `bound`. Returns the slowest.
async fn all_calls_unavailable(broker: &RedisBroker, bound: Duration) -> Duration {
    let mut slowest = Duration::ZERO;
    macro_rules! check {
        ($what:expr, $call:expr) => {{
            let t = Instant::now();
            let result = $call;
            let took = t.elapsed();
            assert!(
                matches!(result, Err(BrokerError::Unavailable(_))),
                "{}: {:?}",
                $what,
                result.map(|_| ())
            );
            assert!(took < bound, "{} took {took:?}", $what);
            slowest = slowest.max(took);
        }};
    }
    let opts = history_options();
    check!(
        "publish with history",
        broker.publish("hist", publication(9), &opts).await
    );
    check!(
        "plain publish",
        broker
            .publish("plain", publication(9), &PublishOptions::default())
            .await
    );
    check!(
        "history",
        broker
            .history("hist", &HistoryFilter::default(), Duration::from_secs(60))
            .await
    );
    check!("subscribe", broker.subscribe("new-channel").await);
    check!("join", broker.publish_join("hist", &info()).await);
    check!("control", broker.publish_control(b"{}").await);
    check!(
        "add presence",
        broker
            .add_presence("hist", &info(), Duration::from_secs(5))
            .await
    );
    check!("presence", broker.presence("hist").await);
    check!("presence stats", broker.presence_stats("hist").await);
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted() {
    let mut server = RedisServer::start();
    let config = support::config(&[server.url()], &support::unique_prefix());
    let command_timeout = config.command_timeout;
    let (broker, events) = started(config, "node").await;
    broker.subscribe("hist").await.unwrap();
    broker.subscribe("plain").await.unwrap();
    let before = broker
        .publish("hist", publication(1), &history_options())
        .await
        .unwrap();
    eventually("first publication", Duration::from_secs(5), || {
        events.publications("hist").len() == 1
    })
    .await;

    server.kill();
    let killed = Instant::now();
    // Right after the kill (connection not yet known dead) and later (known dead): every call
    // fails with Unavailable, within twice the command timeout, never hanging.
    let bound = command_timeout * 2;
    let first = all_calls_unavailable(&broker, bound).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let later = all_calls_unavailable(&broker, bound).await;
    eprintln!(
        "down: slowest call right after kill {first:?}, later {later:?} (command_timeout {command_timeout:?})"
    );
    assert!(!broker.connected());
    // Local state survives: the subscriptions are still known.
    let mut subscribed = broker.subscribed_channels().await;
    subscribed.sort();
    assert_eq!(subscribed, vec!["hist", "plain"]);
    assert!(events.gaps().is_empty());

    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart();
    let restarted = Instant::now();
    eventually("reconnect", Duration::from_secs(5), || broker.connected()).await;
    let reconnect_took = restarted.elapsed();
    eventually("gaps", Duration::from_secs(5), || events.gaps().len() == 2).await;
    let mut gaps = events.gaps();
    gaps.sort();
    assert_eq!(gaps, vec!["hist", "plain"]);
    eprintln!(
        "down for {:?}; reconnected and resubscribed {reconnect_took:?} after restart",
        killed.elapsed() - reconnect_took
    );

    // Resubscribed: publications after the restart are delivered. The restarted Redis lost
    // its data (no persistence), so the stream starts over with a new epoch, which clients
    // holding the old position learn when they recover.
    let after = broker
        .publish("hist", publication(2), &history_options())
        .await
        .unwrap();
    assert_ne!(after.epoch, before.epoch);
    broker
        .publish("plain", publication(3), &PublishOptions::default())
        .await
        .unwrap();
    eventually("publications after restart", Duration::from_secs(5), || {
        events.publications("hist").len() == 2 && events.publications("plain").len() == 1
    })
    .await;
    broker.subscribe("new-channel").await.unwrap();
    broker.presence("hist").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_redis_is_down_and_connects_later() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let mut config = support::config(&[url], &support::unique_prefix());
    config.connect_timeout = Duration::from_millis(300);
    let t = Instant::now();
    let broker = RedisBroker::connect(config, "node").await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(!broker.connected());
    let events = std::sync::Arc::new(support::Recorder::default());
    broker.start(events.clone());
    assert!(matches!(
        broker.subscribe("a").await,
        Err(BrokerError::Unavailable(_))
    ));
    server.restart();
    eventually("connect", Duration::from_secs(5), || broker.connected()).await;
    broker.subscribe("a").await.unwrap();
    broker
        .publish("a", publication(1), &PublishOptions::default())
        .await
        .unwrap();
    eventually("publication", Duration::from_secs(5), || {
        events.publications("a").len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hangs_then_thaws() {
    let server = RedisServer::start();
    let config = support::config(&[server.url()], &support::unique_prefix());
    let command_timeout = config.command_timeout;
    let (broker, events) = started(config, "node").await;
    broker.subscribe("ch").await.unwrap();

    // A frozen Redis answers nothing and closes nothing: only timeouts and health pings notice.
    server.pause();
    let slowest = all_calls_unavailable(&broker, command_timeout * 2).await;
    eprintln!("frozen: slowest call {slowest:?} (command_timeout {command_timeout:?})");
    eventually("disconnect noticed", Duration::from_secs(5), || {
        !broker.connected()
    })
    .await;

    server.resume();
    eventually("reconnect", Duration::from_secs(10), || broker.connected()).await;
    eventually("gap", Duration::from_secs(5), || {
        events.gaps() == vec!["ch".to_string()]
    })
    .await;
    broker
        .publish("ch", publication(1), &PublishOptions::default())
        .await
        .unwrap();
    eventually("publication", Duration::from_secs(5), || {
        events.publications("ch").len() == 1
    })
    .await;
}
