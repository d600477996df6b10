//! NATS failure: a private `nats-server` (JetStream, data in a temporary directory) on a spare
//! port, killed with SIGKILL and restarted.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use switchboard_hub::{Broker, BrokerError, HistoryFilter, PresenceStore};
use tokio::process::{Child, Command};

const NATS_SERVER: &str = "/usr/sbin/nats-server";

fn spare_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn start_nats(port: u16, dir: &Path) -> Child {
    let child = Command::new(NATS_SERVER)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nats-server runs");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "nats-server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

async fn kill(mut child: Child) {
    // tokio's kill sends SIGKILL on Unix.
    child.kill().await.unwrap();
}

/// Failed as not sent (`Unavailable`) or sent without an answer (`OutcomeUnknown`).
fn is_unavailable<T>(r: &Result<T, BrokerError>) -> bool {
    matches!(
        r,
        Err(BrokerError::Unavailable(_) | BrokerError::OutcomeUnknown(_))
    )
}

/// Every kind of call answers `Unavailable`, each within `bound`.
async fn assert_all_unavailable(broker: &switchboard_broker_nats::NatsBroker, bound: Duration) {
    let ch = "room";
    let timed = |started: Instant, what: &str| {
        let took = started.elapsed();
        assert!(took <= bound, "{what} took {took:?}");
        took
    };
    let t = Instant::now();
    let r = broker.publish(ch, publication(9), &history_options()).await;
    assert!(is_unavailable(&r), "publish: {r:?}");
    let publish_took = timed(t, "publish");
    let t = Instant::now();
    let r = broker
        .publish(ch, publication(9), &Default::default())
        .await;
    assert!(is_unavailable(&r), "plain publish: {r:?}");
    timed(t, "plain publish");
    let t = Instant::now();
    let r = broker
        .history(ch, &HistoryFilter::default(), Duration::from_secs(60))
        .await;
    assert!(is_unavailable(&r), "history: {r:?}");
    timed(t, "history");
    let t = Instant::now();
    assert!(is_unavailable(&broker.presence(ch).await));
    assert!(is_unavailable(
        &broker
            .add_presence(ch, &info("u", "c"), Duration::from_secs(5))
            .await
    ));
    assert!(is_unavailable(&broker.subscribe("other").await));
    assert!(is_unavailable(&broker.publish_control(b"{}").await));
    assert!(is_unavailable(
        &broker.publish_join(ch, &info("u", "c")).await
    ));
    timed(t, "presence, subscribe, control and join");
    eprintln!("calls answered Unavailable; a history publish took {publish_took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let port = spare_port();
    let url = format!("nats://127.0.0.1:{port}");
    let server = start_nats(port, dir.path()).await;

    let mut config = test_config(&url, &unique_prefix("fail"));
    config.request_timeout = Duration::from_millis(500);
    let broker = connect(config, "failing", None).await;
    let events = Arc::new(Recorder::default());
    broker.start(events.clone());
    let ch = "room";
    broker.subscribe(ch).await.unwrap();
    let first = broker
        .publish(ch, publication(1), &history_options())
        .await
        .unwrap();
    eventually("the first publication", Duration::from_secs(5), || {
        events.offsets(ch) == [1]
    })
    .await;
    assert_eq!(events.gap_count(ch), 0);

    // Calls made right after the kill, before or after the client noticed, come back with
    // Unavailable within the request timeout (plus scheduling slack), never hanging.
    kill(server).await;
    let killed = Instant::now();
    assert_all_unavailable(&broker, Duration::from_millis(1500)).await;
    eventually("the broker to notice", Duration::from_secs(5), || {
        !broker.is_connected()
    })
    .await;
    eprintln!("disconnect noticed {:?} after the kill", killed.elapsed());
    // Once the loss is known, calls fail at once.
    assert_all_unavailable(&broker, Duration::from_millis(50)).await;

    // Restart with the same data: the client reconnects and resubscribes by itself, reports a
    // gap for the subscribed channel, and the stream continues where it was.
    let server = start_nats(port, dir.path()).await;
    let restarted = Instant::now();
    broker.ready(Duration::from_secs(15)).await.unwrap();
    eprintln!("ready again {:?} after the restart", restarted.elapsed());
    eventually(
        "a gap for the subscribed channel",
        Duration::from_secs(5),
        || events.gap_count(ch) >= 1,
    )
    .await;
    let second = broker
        .publish(ch, publication(2), &history_options())
        .await
        .unwrap();
    // The publish that timed out right after the kill had its offset claim queued in the
    // client, which sent it after the reconnect. This node's next publish takes that offset (2)
    // again while it is still pending (within 4 × request_timeout + 1s of the claim); later it
    // would stay a hole. The stream goes on in the same epoch.
    assert_eq!(second.epoch, first.epoch);
    assert!(second.offset >= 2, "{second:?}");
    eprintln!(
        "the publication after the restart has offset {}",
        second.offset
    );
    eventually(
        "the publication after the restart",
        Duration::from_secs(5),
        || events.offsets(ch) == [1, second.offset],
    )
    .await;
    let h = broker
        .history(ch, &HistoryFilter::default(), Duration::from_secs(3600))
        .await
        .unwrap();
    let offsets: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [1, second.offset]);
    assert_eq!(h.position, second);
    kill(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let port = spare_port();
    let url = format!("nats://127.0.0.1:{port}");
    let mut config = test_config(&url, &unique_prefix("late"));
    config.request_timeout = Duration::from_millis(500);

    // Nothing listens yet: connect returns, calls answer Unavailable.
    let t = Instant::now();
    let broker = switchboard_broker_nats::NatsBroker::connect(config, "early")
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "connect waited for NATS"
    );
    let events = Arc::new(Recorder::default());
    broker.start(events.clone());
    assert!(!broker.is_connected());
    assert_all_unavailable(&broker, Duration::from_millis(50)).await;

    // NATS comes up: the broker connects in the background and works.
    let server = start_nats(port, dir.path()).await;
    let started = Instant::now();
    broker.ready(Duration::from_secs(15)).await.unwrap();
    eprintln!("ready {:?} after NATS started", started.elapsed());
    broker.subscribe("room").await.unwrap();
    let pos = broker
        .publish("room", publication(1), &history_options())
        .await
        .unwrap();
    assert_eq!(pos.offset, 1);
    eventually("the publication", Duration::from_secs(5), || {
        events.offsets("room") == [1]
    })
    .await;
    broker.publish_control(b"{}").await.unwrap();
    eventually("the control message", Duration::from_secs(5), || {
        events.control().len() == 1
    })
    .await;
    kill(server).await;
}

fn signal(child: &Child, sig: &str) {
    let id = child.id().expect("nats-server running");
    let pid = id.to_string();
    let status = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
    if sig == "-STOP" {
        switchboard_hub::conformance::wait_stopped(id);
    }
}

/// A frozen server (SIGSTOP) keeps its TCP connection open, so the client does not notice it for
/// minutes; the health probe does: the broker reports itself not connected within
/// `health_check_interval + request_timeout`, and connected again once the server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_frozen_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let port = spare_port();
    let url = format!("nats://127.0.0.1:{port}");
    let server = start_nats(port, dir.path()).await;
    let mut config = test_config(&url, &unique_prefix("frozen"));
    config.request_timeout = Duration::from_millis(500);
    config.health_check_interval = Duration::from_millis(200);
    let broker = connect(config, "frozen", None).await;
    broker.start(Arc::new(Recorder::default()));
    // Several probes pass while the server answers.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(broker.is_connected());

    signal(&server, "-STOP");
    let stopped = Instant::now();
    eventually(
        "the frozen server to be noticed",
        Duration::from_secs(3),
        || !broker.is_connected(),
    )
    .await;
    let noticed = stopped.elapsed();
    eprintln!("frozen server noticed after {noticed:?}");
    // interval + timeout, plus scheduling slack.
    assert!(noticed <= Duration::from_millis(1200), "took {noticed:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!broker.is_connected(), "stays unavailable while frozen");

    signal(&server, "-CONT");
    let resumed = Instant::now();
    eventually("the server to answer again", Duration::from_secs(3), || {
        broker.is_connected()
    })
    .await;
    eprintln!("resumed server noticed after {:?}", resumed.elapsed());
    broker
        .publish("room", publication(1), &history_options())
        .await
        .unwrap();
    kill(server).await;
}

/// A publish whose append times out because the server is frozen, and that the server applies
/// when it resumes: its offset is no hole. It was given back (or the give-back timed out too
/// and is applied after the append): the next publish is refused the same offset as a duplicate
/// (message id) and takes the one after, so recovery across it is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_during_a_freeze_leaves_no_hole() {
    let dir = tempfile::tempdir().unwrap();
    let port = spare_port();
    let url = format!("nats://127.0.0.1:{port}");
    let server = start_nats(port, dir.path()).await;
    let mut config = test_config(&url, &unique_prefix("freeze"));
    config.request_timeout = Duration::from_millis(500);
    let broker = connect(config, "freeze", None).await;
    let events = Arc::new(Recorder::default());
    broker.start(events.clone());
    let ch = "room";
    broker.subscribe(ch).await.unwrap();
    let first = broker
        .publish(ch, publication(1), &history_options())
        .await
        .unwrap();

    // The second publish has its offset; the server freezes before its append.
    let hold = broker.hold_appends().await;
    let publisher = broker.clone();
    let second = tokio::spawn(async move {
        publisher
            .publish(ch, publication(2), &history_options())
            .await
    });
    eventually(
        "the publish to get its offset",
        Duration::from_secs(5),
        || broker.appends_waiting() == 1,
    )
    .await;
    signal(&server, "-STOP");
    drop(hold);
    let failed = second.await.unwrap();
    // The append was sent; JetStream may store it (it does, once resumed): outcome unknown.
    assert!(
        matches!(failed, Err(BrokerError::OutcomeUnknown(_))),
        "{failed:?}"
    );
    signal(&server, "-CONT");

    let next = broker
        .publish(ch, publication(3), &history_options())
        .await
        .unwrap();
    assert_eq!(next.epoch, first.epoch);
    let h = broker
        .history(ch, &HistoryFilter::default(), Duration::from_secs(3600))
        .await
        .unwrap();
    let offsets: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
    eprintln!("after the freeze: {offsets:?}, position {:?}", h.position);
    // Contiguous from 1 to the position, whichever way it went.
    assert_eq!(offsets, (1..=next.offset).collect::<Vec<_>>());
    assert_eq!(h.position, next);
    assert_eq!(
        h.publications.last().unwrap().data.get(),
        publication(3).data.get()
    );
    kill(server).await;
}

/// The harness's problem 4: a publish with an idempotency key whose append times out because
/// NATS is frozen (JetStream stores it when it resumes), retried with the same key once NATS
/// answers again: the retry answers the first attempt's offset and nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_append_during_a_freeze_is_published_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = spare_port();
    let url = format!("nats://127.0.0.1:{port}");
    let server = start_nats(port, dir.path()).await;
    let mut config = test_config(&url, &unique_prefix("freeze-keyed"));
    config.request_timeout = Duration::from_millis(500);
    let broker = connect(config, "freeze-keyed", None).await;
    broker.start(Arc::new(Recorder::default()));
    let ch = "room";
    let mut keyed = history_options();
    keyed.idempotency_key = Some("order-2".into());
    keyed.idempotent_result_ttl = Duration::from_secs(60);
    let first = broker
        .publish(ch, publication(1), &history_options())
        .await
        .unwrap();

    let hold = broker.hold_appends().await;
    let publisher = broker.clone();
    let options = keyed.clone();
    let second = tokio::spawn(async move { publisher.publish(ch, publication(2), &options).await });
    eventually(
        "the publish to get its offset",
        Duration::from_secs(5),
        || broker.appends_waiting() == 1,
    )
    .await;
    signal(&server, "-STOP");
    drop(hold);
    let failed = second.await.unwrap();
    assert!(
        matches!(failed, Err(BrokerError::OutcomeUnknown(_))),
        "{failed:?}"
    );
    signal(&server, "-CONT");

    // The client retries with the same key (the harness retries through another node; one
    // node is enough here), then publishes on.
    let retry = broker.publish(ch, publication(2), &keyed).await.unwrap();
    assert_eq!((retry.offset, &retry.epoch), (2, &first.epoch));
    let next = broker
        .publish(ch, publication(3), &history_options())
        .await
        .unwrap();
    assert_eq!(next.offset, 3);
    let h = broker
        .history(ch, &HistoryFilter::default(), Duration::from_secs(3600))
        .await
        .unwrap();
    let got: Vec<(u64, String)> = h
        .publications
        .iter()
        .map(|p| (p.offset, p.data.get().to_string()))
        .collect();
    let want: Vec<(u64, String)> = (1..=3)
        .map(|n| (n, publication(n).data.get().to_string()))
        .collect();
    assert_eq!(got, want);
    kill(server).await;
}
