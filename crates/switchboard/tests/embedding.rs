//! The library through its public API only: the examples, handlers that panic or are slow, and
//! two embedded nodes on Redis behaving as one. Clients are the Rust protocol client.

#[path = "../examples/chat.rs"]
#[allow(dead_code)]
mod chat;
mod common;
#[path = "../examples/rpc.rs"]
#[allow(dead_code)]
mod rpc;
#[path = "../examples/ticker.rs"]
#[allow(dead_code)]
mod ticker;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use switchboard::{
    Broker, Config, ConnectReply, Data, DisconnectCode, ErrorCode, Node, PublishReply, RpcReply,
    SubscribeReply,
};
use switchboard_client::{Client, ClientError};

const WAIT: Duration = Duration::from_secs(5);

fn url(addr: SocketAddr, prefix: &str) -> String {
    format!("ws://{addr}{prefix}/connection/websocket")
}

async fn connect(url: &str, data: Option<Value>) -> Result<Client, ClientError> {
    let mut builder = Client::builder(url).no_reconnect().timeout(WAIT);
    if let Some(data) = data {
        builder = builder.data(&data)?;
    }
    builder.connect().await
}

async fn start(node: Node) -> switchboard::Server {
    node.start("127.0.0.1:0".parse().unwrap()).await.unwrap()
}

async fn next_data(sub: &mut switchboard_client::Subscription) -> Value {
    let publication = tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("a publication in time")
        .expect("subscription open");
    publication.value()
}

#[tokio::test]
async fn chat_example_checks_nicknames_rooms_and_messages() {
    let (app, _node) = chat::app().await.unwrap();
    let addr = common::serve(app).await;
    let url = url(addr, "/realtime");

    let err = connect(&url, None).await.unwrap_err();
    assert!(err.is_server_code(101), "{err}");
    let err = connect(&url, Some(json!({"nick": "no spaces"})))
        .await
        .unwrap_err();
    assert!(err.is_server_code(4000), "{err}");

    let alice = connect(&url, Some(json!({"nick": "alice"}))).await.unwrap();
    let err = alice.subscribe("news").await.unwrap_err();
    assert!(err.is_server_code(103), "{err}");
    let mut room = alice.subscribe("room:lobby").await.unwrap();

    let bob = connect(&url, Some(json!({"nick": "bob"}))).await.unwrap();
    let err = bob
        .publish("room:lobby", json!({"text": ""}))
        .await
        .unwrap_err();
    assert!(err.is_server_code(4001), "{err}");
    bob.publish("room:lobby", json!({"text": "  hi alice "}))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut room).await,
        json!({"nick": "bob", "text": "hi alice"})
    );

    // The app's own routes live beside the node's.
    let rooms = http_get(addr, "/rooms").await;
    assert!(rooms.contains("room:lobby"), "{rooms}");
    let page = http_get(addr, "/").await;
    assert!(page.contains("chat"), "{page}");
}

#[tokio::test]
async fn rpc_example_answers_its_methods() {
    let server = start(rpc::node().await.unwrap()).await;
    let client = connect(&url(server.addr(), ""), None).await.unwrap();
    assert_eq!(
        client.rpc("add", json!({"a": 1, "b": 2.5})).await.unwrap(),
        json!({"sum": 3.5})
    );
    let me = client.rpc("whoami", Value::Null).await.unwrap();
    assert_eq!(me["client"], json!(client.id()));
    let err = client.rpc("nope", Value::Null).await.unwrap_err();
    assert!(err.is_server_code(104), "{err}");
    let err = client.rpc("add", json!({"a": "x"})).await.unwrap_err();
    assert!(err.is_server_code(107), "{err}");
    server.shutdown().await;
}

#[tokio::test]
async fn ticker_example_publishes_from_a_background_task() {
    let node = Node::builder().build().await.unwrap();
    let ticks = ticker::spawn_ticker(node.clone(), Duration::from_millis(50));
    let server = start(node).await;
    let client = connect(&url(server.addr(), ""), None).await.unwrap();
    let mut sub = client.subscribe("ticker").await.unwrap();
    let first = next_data(&mut sub).await["tick"].as_u64().unwrap();
    let second = next_data(&mut sub).await["tick"].as_u64().unwrap();
    assert_eq!(second, first + 1);
    ticks.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn a_panicking_handler_is_a_temporary_error_and_the_node_goes_on() {
    let node = Node::builder()
        .on_rpc(|_ctx, req| async move {
            if req.method == "boom" {
                panic!("handler bug");
            }
            Ok(RpcReply::data(Data::json("fine")?))
        })
        .on_subscribe(|_ctx, req| async move {
            if req.channel == "boom" {
                panic!("handler bug");
            }
            Ok(SubscribeReply::accept())
        })
        .build()
        .await
        .unwrap();
    let server = start(node).await;
    let client = connect(&url(server.addr(), ""), None).await.unwrap();
    match client.rpc("boom", Value::Null).await.unwrap_err() {
        ClientError::Server {
            code, temporary, ..
        } => assert!(code == 100 && temporary),
        other => panic!("{other}"),
    }
    let err = client.subscribe("boom").await.unwrap_err();
    assert!(err.is_server_code(100), "{err}");
    // The same connection and new ones still work.
    assert_eq!(client.rpc("ok", Value::Null).await.unwrap(), json!("fine"));
    let other = connect(&url(server.addr(), ""), None).await.unwrap();
    other.subscribe("news").await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_slow_handler_does_not_hold_up_the_connection() {
    // "slow" answers only when the test lets it, after checking that everything else went on.
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let node = Node::builder()
        .handler_timeout(Duration::from_millis(1500))
        .on_rpc(move |_ctx, req| {
            let gate = gate.clone();
            async move {
                match req.method.as_str() {
                    "slow" => gate.notified().await,
                    "stuck" => tokio::time::sleep(Duration::from_secs(60)).await,
                    _ => {}
                }
                Ok(RpcReply::data(Data::json(&req.method)?))
            }
        })
        .build()
        .await
        .unwrap();
    let server = start(node.clone()).await;
    let client = connect(&url(server.addr(), ""), None).await.unwrap();
    let mut news = client.subscribe("news").await.unwrap();

    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.rpc("slow", Value::Null).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // While "slow" waits: other calls are answered, publications arrive, commands are served.
    assert_eq!(
        client.rpc("fast", Value::Null).await.unwrap(),
        json!("fast")
    );
    node.publish_json("news", &json!({"n": 1})).await.unwrap();
    assert_eq!(next_data(&mut news).await, json!({"n": 1}));
    client.publish("news", json!({"n": 2})).await.unwrap();
    assert_eq!(next_data(&mut news).await, json!({"n": 2}));
    assert!(!slow.is_finished(), "the slow call was answered too early");
    release.notify_one();
    assert_eq!(slow.await.unwrap().unwrap(), json!("slow"));

    // A handler past its time limit is a temporary error.
    let err = client.rpc("stuck", Value::Null).await.unwrap_err();
    assert!(err.is_server_code(100), "{err}");
    server.shutdown().await;
}

/// Per namespace, an HTTP proxy configured for a call decides it, and the typed handler decides
/// the rest: here the `proxied` namespace has a subscribe proxy (an axum route of the test), the
/// other namespaces go to `on_subscribe`.
#[tokio::test]
async fn handlers_and_http_proxies_compose_per_namespace() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let proxy_calls = Arc::new(AtomicUsize::new(0));
    let handler_calls = Arc::new(AtomicUsize::new(0));
    let counted = proxy_calls.clone();
    let proxy = axum::Router::new().route(
        "/subscribe",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = if body["channel"] == "proxied:open" {
                    json!({"result": {}})
                } else {
                    json!({"error": {"code": 4403, "message": "closed by the proxy"}})
                };
                axum::Json(answer)
            }
        }),
    );
    let proxy_addr = common::serve(proxy).await;
    // Built in code; the same as `[proxy] subscribe_endpoint = ...` and
    // `[[channel.namespaces]] name = "proxied", proxy_subscribe = true` plus a `rooms` namespace.
    let mut config = Config::development();
    config.proxy.subscribe_endpoint = format!("http://{proxy_addr}/subscribe");
    let mut proxied = switchboard::config::NamespaceOptions::default();
    proxied.name = "proxied".into();
    proxied.proxy_subscribe = true;
    let mut rooms = switchboard::config::NamespaceOptions::default();
    rooms.name = "rooms".into();
    config.channel.namespaces = vec![proxied, rooms];
    let asked = handler_calls.clone();
    let node = Node::builder()
        .config(config)
        .on_subscribe(move |_ctx, req| {
            asked.fetch_add(1, Ordering::SeqCst);
            async move {
                if req.channel.ends_with(":lobby") || req.channel == "news" {
                    Ok(SubscribeReply::accept())
                } else {
                    Err(ErrorCode::PERMISSION_DENIED.into())
                }
            }
        })
        .build()
        .await
        .unwrap();
    let server = start(node).await;
    let client = connect(&url(server.addr(), ""), None).await.unwrap();

    // The proxy decides its namespace, whatever the handler would say.
    client.subscribe("proxied:open").await.unwrap();
    let err = client.subscribe("proxied:lobby").await.unwrap_err();
    assert!(err.is_server_code(4403), "{err}");
    assert_eq!(proxy_calls.load(Ordering::SeqCst), 2);
    assert_eq!(handler_calls.load(Ordering::SeqCst), 0);

    // The handler decides the others.
    client.subscribe("rooms:lobby").await.unwrap();
    client.subscribe("news").await.unwrap();
    let err = client.subscribe("rooms:secret").await.unwrap_err();
    assert!(err.is_server_code(103), "{err}");
    assert_eq!(handler_calls.load(Ordering::SeqCst), 3);
    assert_eq!(proxy_calls.load(Ordering::SeqCst), 2);
    server.shutdown().await;
}

/// A subscription whose expiry comes is extended by the sub_refresh handler; one the handler
/// declares expired gets the unsubscribe push 2501 ("subscription expired", resubscribe): the
/// client subscribes again, which asks the subscribe handler again. The connection goes on.
#[tokio::test]
async fn the_sub_refresh_handler_extends_or_ends_an_expiring_subscription() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let subscribes = tx.clone();
    let node = Node::builder()
        .on_subscribe(move |_ctx, req| {
            let _ = subscribes.send(format!("subscribe {}", req.channel));
            async move { Ok(SubscribeReply::accept().with_expire_at(unix_now() + 1)) }
        })
        .on_sub_refresh(move |_ctx, channel| {
            let t = tx.clone();
            async move {
                let _ = t.send(format!("refresh {channel}"));
                if channel == "keep" {
                    Ok(switchboard::RefreshReply::until(unix_now() + 3600))
                } else {
                    Ok(switchboard::RefreshReply::expired())
                }
            }
        })
        .build()
        .await
        .unwrap();
    let server = start(node).await;
    let client = connect(&url(server.addr(), ""), None).await.unwrap();
    let mut kept = client.subscribe("keep").await.unwrap();
    let _ended = client.subscribe("end").await.unwrap();
    let mut calls = take(&mut rx, 5).await;
    calls.sort();
    // Both subscribed, both asked at their expiry, and only "end" subscribed again.
    assert_eq!(
        calls,
        [
            "refresh end",
            "refresh keep",
            "subscribe end",
            "subscribe end",
            "subscribe keep"
        ]
    );
    // The kept subscription and the connection still work past the first expiry.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server_publish(&client, "keep").await;
    assert_eq!(next_data(&mut kept).await, json!({"still": "here"}));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "keep was not extended"
    );
    server.shutdown().await;
}

fn redis_prefix() -> String {
    format!("sbtest-embed-{}", uuid::Uuid::new_v4().simple())
}

/// A node on Redis whose publish handler stamps the data with the node's name.
async fn redis_node(name: &str, prefix: &str) -> Node {
    let mut config = Config::development();
    config.node_name = name.into();
    Node::builder()
        .config(config)
        .broker(Broker::redis("redis://127.0.0.1:6379", prefix))
        .on_connect(|_ctx, req| async move {
            let user: String = req.data.ok_or(ErrorCode::UNAUTHORIZED)?.decode()?;
            Ok(ConnectReply::user(user))
        })
        .on_publish({
            let node = name.to_string();
            move |_ctx, req| {
                let node = node.clone();
                async move {
                    let text: String = req.data.decode()?;
                    Ok(PublishReply::replace(Data::json(
                        &json!({"text": text, "via": node}),
                    )?))
                }
            }
        })
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn two_nodes_on_redis_behave_as_one() {
    let prefix = redis_prefix();
    let a = redis_node("a", &prefix).await;
    let b = redis_node("b", &prefix).await;
    let server_a = start(a.clone()).await;
    let server_b = start(b.clone()).await;

    let alice = connect(&url(server_a.addr(), ""), Some(json!("alice")))
        .await
        .unwrap();
    let bob = connect(&url(server_b.addr(), ""), Some(json!("bob")))
        .await
        .unwrap();
    let mut bobs = bob.subscribe("chat").await.unwrap();

    // A client publication on A (decided by A's handler) reaches a subscriber on B.
    alice.publish("chat", json!("hello bob")).await.unwrap();
    assert_eq!(
        next_data(&mut bobs).await,
        json!({"text": "hello bob", "via": "a"})
    );
    // And back: B's handler decides for B's client.
    let mut alices = alice.subscribe("chat").await.unwrap();
    bob.publish("chat", json!("hi alice")).await.unwrap();
    assert_eq!(
        next_data(&mut alices).await,
        json!({"text": "hi alice", "via": "b"})
    );
    assert_eq!(
        next_data(&mut bobs).await,
        json!({"text": "hi alice", "via": "b"})
    );
    // A server-side publication on A too.
    a.publish_json("chat", &json!({"text": "from node a"}))
        .await
        .unwrap();
    assert_eq!(next_data(&mut bobs).await, json!({"text": "from node a"}));

    // Actions on users reach the node they are on.
    let mut events = bob.events();
    a.disconnect("bob", DisconnectCode::FORCE_NO_RECONNECT)
        .await
        .unwrap();
    let code = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(switchboard_client::ClientEvent::Disconnected { code, .. }) =
                events.recv().await
            {
                return code;
            }
        }
    })
    .await
    .expect("bob disconnected in time");
    assert_eq!(code, 3503);
    // Both nodes know each other.
    tokio::time::timeout(WAIT, async {
        while a.info().len() < 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("node b announced to node a");
    drop(alice);
    server_a.shutdown().await;
    server_b.shutdown().await;
}

/// A GET over a raw TCP connection; returns the response (head and body).
async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Node>();
    check::<switchboard::Server>();
    check::<switchboard::NodeBuilder>();
    check::<switchboard::Rejection>();
    check::<switchboard::ClientContext>();
    let _ = ErrorCode::INTERNAL;
}

/// The next `n` strings from `rx`, each within [`WAIT`].
async fn take(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    out
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The notifications come in the order things happened: subscribed, unsubscribed (by the
/// client, and for every subscription left when the connection ends), then disconnect with
/// the code the server closed with.
#[tokio::test]
async fn notifications_follow_the_subscriptions_and_the_end_of_the_connection() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (t1, t2, t3) = (tx.clone(), tx.clone(), tx);
    let node = Node::builder()
        .on_connect(|_ctx, _req| async move { Ok(ConnectReply::user("ann")) })
        .on_subscribed(move |ctx, channel| {
            let t = t1.clone();
            async move {
                let _ = t.send(format!("subscribed {} {channel}", ctx.user()));
            }
        })
        .on_unsubscribed(move |_ctx, channel| {
            let t = t2.clone();
            async move {
                let _ = t.send(format!("unsubscribed {channel}"));
            }
        })
        .on_disconnect(move |ctx, code| {
            let t = t3.clone();
            async move {
                let _ = t.send(format!("disconnect {} {}", ctx.user(), code.code));
            }
        })
        .build()
        .await
        .unwrap();
    let server = start(node.clone()).await;
    let client = connect(&url(server.addr(), ""), None).await.unwrap();
    let a = client.subscribe("a").await.unwrap();
    a.unsubscribe().await.unwrap();
    let _b = client.subscribe("b").await.unwrap();
    let seen = take(&mut rx, 3).await;
    assert_eq!(
        seen,
        ["subscribed ann a", "unsubscribed a", "subscribed ann b"]
    );
    node.disconnect("ann", DisconnectCode::FORCE_NO_RECONNECT)
        .await
        .unwrap();
    let mut rest = take(&mut rx, 2).await;
    rest.sort();
    assert_eq!(rest, ["disconnect ann 3503", "unsubscribed b"]);
    server.shutdown().await;
}

/// A connection whose expiry comes is extended by the refresh handler, without the client
/// doing anything; one the handler declares expired is closed with 3005.
#[tokio::test]
async fn the_refresh_handler_extends_or_ends_an_expiring_connection() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let node = Node::builder()
        .on_connect(|_ctx, req| async move {
            let user: String = req.data.ok_or(ErrorCode::UNAUTHORIZED)?.decode()?;
            Ok(ConnectReply::user(user).with_expire_at(unix_now() + 1))
        })
        .on_refresh(move |ctx| {
            let t = tx.clone();
            async move {
                let _ = t.send(ctx.user().to_string());
                if ctx.user() == "keep" {
                    Ok(switchboard::RefreshReply::until(unix_now() + 3600))
                } else {
                    Ok(switchboard::RefreshReply::expired())
                }
            }
        })
        .build()
        .await
        .unwrap();
    let server = start(node).await;
    let keep = connect(&url(server.addr(), ""), Some(json!("keep")))
        .await
        .unwrap();
    let mut kept = keep.subscribe("k").await.unwrap();
    let drop_me = connect(&url(server.addr(), ""), Some(json!("drop")))
        .await
        .unwrap();
    let mut events = drop_me.events();
    let mut asked = take(&mut rx, 2).await;
    asked.sort();
    assert_eq!(asked, ["drop", "keep"]);
    let code = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(switchboard_client::ClientEvent::Disconnected { code, .. }) =
                events.recv().await
            {
                return code;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 3005);
    // The kept connection still works past its first expiry.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server_publish(&keep, "k").await;
    assert_eq!(next_data(&mut kept).await, json!({"still": "here"}));
    server.shutdown().await;
}

async fn server_publish(client: &Client, channel: &str) {
    client
        .publish(channel, json!({"still": "here"}))
        .await
        .unwrap();
}
