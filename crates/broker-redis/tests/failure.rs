//! Redis going away and coming back: calls fail fast with `Unavailable`, the broker reconnects,
//! resubscribes and reports a gap for every subscribed channel.

mod support;

use std::time::{Duration, Instant};

use support::{
    delivers, eventually, history_options, info, publication, started, until_ok, RedisServer,
};
use switchboard_broker_redis::RedisBroker;
use switchboard_hub::{Broker, BrokerError, HistoryFilter, PresenceStore, PublishOptions};

/// Runs every kind of call that needs Redis and checks each fails within `bound`, with
/// `Unavailable` (not sent) or `OutcomeUnknown` (sent, no answer: a frozen Redis before the
/// health ping noticed). Returns the slowest.
async fn all_calls_unavailable(broker: &RedisBroker, bound: Duration) -> Duration {
    let mut slowest = Duration::ZERO;
    macro_rules! check {
        ($what:expr, $call:expr) => {{
            let t = Instant::now();
            let result = $call;
            let took = t.elapsed();
            assert!(
                matches!(
                    result,
                    Err(BrokerError::Unavailable(_) | BrokerError::OutcomeUnknown(_))
                ),
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
    check!("join", broker.publish_join("hist", &info("u", "c")).await);
    check!("control", broker.publish_control(b"{}").await);
    check!(
        "add presence",
        broker
            .add_presence("hist", &info("u", "c"), Duration::from_secs(5))
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
    eventually("the loss noticed", Duration::from_secs(5), || {
        !broker.connected()
    })
    .await;
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

    // Stay down a while (reconnect attempts fail and back off), then come back.
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
    delivers(&broker, &events, "a").await;
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
    delivers(&broker, &events, "ch").await;
}

/// Regression test: after Redis restarted, the shard reported itself connected (its new pub/sub
/// connection was up) while its command connection was still the one to the dead server, and
/// the first publish failed with "broken pipe". That happened whenever the command connection
/// was newer than the pub/sub connection (at startup it depends on which connects first, so the
/// Sentinel restart test failed about every other run) and no health ping came in between.
/// Here the command connection is made newer on purpose and health pings are an hour apart,
/// so the old behaviour failed every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_publish_after_a_restart_uses_a_live_connection() {
    let mut server = RedisServer::start();
    let mut config = support::config(&[server.url()], &support::unique_prefix());
    config.health_check_interval = Duration::from_secs(3600);
    let (broker, events) = started(config, "node").await;
    broker.subscribe("ch").await.unwrap();

    // Replace the command connection: it is now newer than the pub/sub connection.
    server.kill_clients("normal");
    until_ok(
        "a call on a new command connection",
        Duration::from_secs(5),
        || broker.presence("ch"),
    )
    .await;

    server.restart();
    eventually("reconnect", Duration::from_secs(10), || {
        broker.connected() && events.gaps() == vec!["ch".to_string()]
    })
    .await;
    // Connected means usable: no retry needed, and none is made for these (see below).
    broker
        .publish("ch", publication(1), &PublishOptions::default())
        .await
        .unwrap();
    broker
        .publish("ch", publication(2), &history_options())
        .await
        .unwrap();
    eventually("both publications", Duration::from_secs(5), || {
        events.publications("ch").len() == 2
    })
    .await;
}

/// The command connection breaks under a call (killed by the server; health pings are out of
/// the way): calls whose second run changes nothing are run again on a new connection and
/// succeed; a publish that a second run would publish twice is not repeated and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_connection_repeats_only_what_is_safe_to_repeat() {
    let server = RedisServer::start();
    let mut config = support::config(&[server.url()], &support::unique_prefix());
    config.health_check_interval = Duration::from_secs(3600);
    // Generous: the retry waits at most this for the new connection.
    config.command_timeout = Duration::from_secs(2);
    let (broker, events) = started(config, "node").await;
    broker.subscribe("ch").await.unwrap();
    let connected = || async {
        eventually("connected", Duration::from_secs(5), || broker.connected()).await;
    };

    server.kill_clients("normal");
    broker
        .history("ch", &HistoryFilter::default(), Duration::from_secs(60))
        .await
        .unwrap();
    server.kill_clients("normal");
    broker
        .add_presence("ch", &info("u", "c"), Duration::from_secs(60))
        .await
        .unwrap();
    server.kill_clients("normal");
    assert_eq!(broker.presence("ch").await.unwrap().len(), 1);
    // With an idempotency key a second run returns the first one's result.
    let mut idempotent = history_options();
    idempotent.idempotency_key = Some("key".into());
    idempotent.idempotent_result_ttl = Duration::from_secs(60);
    server.kill_clients("normal");
    let first = broker
        .publish("ch", publication(1), &idempotent)
        .await
        .unwrap();
    assert_eq!(first.offset, 1);

    // Without one, a broken pipe may hide a publish Redis ran: not repeated, and the caller is
    // told the outcome is unknown (here it did not run: the server had closed the connection).
    for options in [history_options(), PublishOptions::default()] {
        connected().await;
        server.kill_clients("normal");
        let result = broker.publish("ch", publication(2), &options).await;
        assert!(
            matches!(result, Err(BrokerError::OutcomeUnknown(_))),
            "{result:?}"
        );
    }
    connected().await;
    let next = broker
        .publish("ch", publication(3), &history_options())
        .await
        .unwrap();
    assert_eq!(next.offset, 2, "the failed publishes did not run");
    eventually("two publications", Duration::from_secs(5), || {
        events.publications("ch").len() == 2
    })
    .await;
    let data: Vec<String> = events
        .publications("ch")
        .iter()
        .map(|p| p.data.get().to_string())
        .collect();
    assert_eq!(data, ["{\"n\":1}", "{\"n\":3}"]);
}

/// A write refused with READONLY (the server became a replica without closing connections, as
/// after a network partition) provably did not run, so even a publish without an idempotency
/// key is tried once more, on a new connection (here to the same replica, so it fails again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_refused_as_readonly_is_tried_once_more() {
    let primary = RedisServer::start();
    let demoted = RedisServer::start();
    let config = support::config(&[demoted.url()], &support::unique_prefix());
    let (broker, _events) = started(config, "node").await;
    demoted.cli(&["replicaof", "127.0.0.1", &primary.port.to_string()]);
    eventually("replica in sync", Duration::from_secs(10), || {
        demoted
            .cli(&["info", "replication"])
            .contains("master_link_status:up")
    })
    .await;
    let result = broker
        .publish("ch", publication(1), &history_options())
        .await;
    assert!(
        matches!(result, Err(BrokerError::Unavailable(_))),
        "{result:?}"
    );
    let stats = demoted.cli(&["info", "errorstats"]);
    assert!(stats.contains("errorstat_READONLY:count=2"), "{stats}");
}

/// A publish sent to a frozen Redis times out: the caller is told `OutcomeUnknown` (the API
/// says "outcome unknown"), never a plain failure, because the command may run when Redis
/// resumes (here the client gave up on the connection first, so it usually does not). Either
/// way the stream stays consistent: history holds the publication exactly when the position
/// counts it, and the next publish works. Health pings are out of the way so that the command
/// surely goes out on the live connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_into_a_frozen_redis_is_outcome_unknown() {
    let server = RedisServer::start();
    let mut config = support::config(&[server.url()], &support::unique_prefix());
    config.health_check_interval = Duration::from_secs(3600);
    config.command_timeout = Duration::from_millis(300);
    let (broker, _events) = started(config, "node").await;
    broker.subscribe("ch").await.unwrap();

    server.pause();
    let result = broker
        .publish("ch", publication(1), &history_options())
        .await;
    assert!(
        matches!(result, Err(BrokerError::OutcomeUnknown(_))),
        "{result:?}"
    );
    server.resume();
    let options = history_options();
    let next = until_ok("a publish after the freeze", Duration::from_secs(5), || {
        broker.publish("ch", publication(2), &options)
    })
    .await;
    let all = HistoryFilter::default();
    let h = broker
        .history("ch", &all, Duration::from_secs(60))
        .await
        .unwrap();
    let offsets: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, (1..=next.offset).collect::<Vec<_>>(), "{h:?}");
    assert_eq!(h.position, next);
}
