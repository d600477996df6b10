//! The client against a small in-test server built on `switchboard-ws` (Role::Server): enough
//! of the protocol to check connect, subscribe, publish, pings, errors, timeouts, reconnect,
//! resubscribe and recovery without the real server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use switchboard_client::{
    Backoff, Client, ClientError, ClientEvent, SubscribeOptions, SubscriptionEvent,
};
use switchboard_ws::{accept_key, Message, Role, WsConfig, WsSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

/// What the test tells a connection to do.
#[derive(Debug, Clone)]
enum Control {
    Frame(String),
    Close(u16, String),
}

#[derive(Default)]
struct State {
    /// Channel -> published (offset, data).
    history: HashMap<String, Vec<(u64, Value)>>,
    /// Live connections by client id.
    conns: HashMap<String, mpsc::UnboundedSender<Control>>,
    /// Channel -> subscribed client ids.
    subs: HashMap<String, Vec<String>>,
    connects: usize,
    pongs: usize,
    /// Every command received (pongs excluded), in order.
    commands: Vec<Value>,
    /// Seconds announced in the connect reply's `ping`.
    ping: u32,
}

#[derive(Clone)]
struct FakeServer {
    url: String,
    state: Arc<Mutex<State>>,
}

const EPOCH: &str = "ep1";

impl FakeServer {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("ws://{}/connection/websocket", listener.local_addr()?);
        let server = Self {
            url,
            state: Arc::default(),
        };
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = s.serve(tcp).await;
                });
            }
        });
        Ok(server)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Appends to a channel's history and pushes to its subscribers.
    fn publish(&self, channel: &str, data: Value) -> u64 {
        let mut st = self.lock();
        let list = st.history.entry(channel.to_owned()).or_default();
        let offset = list.len() as u64 + 1;
        list.push((offset, data.clone()));
        let push = json!({"push": {"channel": channel, "pub": {"data": data, "offset": offset}}})
            .to_string();
        for client in st.subs.get(channel).cloned().unwrap_or_default() {
            if let Some(tx) = st.conns.get(&client) {
                let _ = tx.send(Control::Frame(push.clone()));
            }
        }
        offset
    }

    fn control(&self, client: &str, c: Control) {
        if let Some(tx) = self.lock().conns.get(client) {
            let _ = tx.send(c);
        }
    }

    fn commands(&self, method: &str) -> Vec<Value> {
        self.lock()
            .commands
            .iter()
            .filter_map(|c| c.get(method).cloned())
            .collect()
    }

    async fn serve(self, mut tcp: TcpStream) -> Result<()> {
        // Opening handshake, by hand.
        let mut buf = Vec::new();
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await?;
            if n == 0 {
                bail!("eof in handshake");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let req = String::from_utf8(buf)?;
        let key = req
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim().to_owned())
            })
            .context("no key")?;
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(key.as_bytes())
        );
        tcp.write_all(resp.as_bytes()).await?;
        let mut ws = WsSocket::new(tcp, Role::Server, WsConfig::default());
        let (tx, mut ctrl) = mpsc::unbounded_channel();
        let mut client_id = String::new();
        loop {
            let event = tokio::select! {
                m = ws.recv() => Ok(m),
                c = ctrl.recv() => Err(c),
            };
            match event {
                Ok(Ok(Some(Message::Text(frame)))) => {
                    let mut replies = Vec::new();
                    for line in frame.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                        let cmd: Value = serde_json::from_slice(line)?;
                        if let Some(r) = self.handle(&cmd, &mut client_id, &tx) {
                            replies.push(r);
                        }
                    }
                    if let Some(close) = replies.iter().find_map(|r| r.strip_prefix("close:")) {
                        let (code, reason) = close.split_once(':').unwrap_or((close, ""));
                        ws.close(code.parse()?, reason).await?;
                        break;
                    }
                    if !replies.is_empty() {
                        // Several replies in one frame, as real servers batch them.
                        ws.send(Message::text(replies.join("\n"))).await?;
                    }
                }
                Ok(Ok(Some(_))) => {}
                Ok(_) => break,
                Err(Some(Control::Frame(f))) => ws.send(Message::text(f)).await?,
                Err(Some(Control::Close(code, reason))) => {
                    ws.close(code, &reason).await?;
                    break;
                }
                Err(None) => break,
            }
        }
        let mut st = self.lock();
        st.conns.remove(&client_id);
        for list in st.subs.values_mut() {
            list.retain(|c| *c != client_id);
        }
        Ok(())
    }

    /// The reply line for one command (`close:<code>:<reason>` closes the connection).
    fn handle(
        &self,
        cmd: &Value,
        client_id: &mut String,
        tx: &mpsc::UnboundedSender<Control>,
    ) -> Option<String> {
        let id = cmd["id"].as_u64().unwrap_or(0);
        if id == 0 && cmd.get("send").is_none() {
            self.lock().pongs += 1;
            return None;
        }
        let mut st = self.lock();
        st.commands.push(cmd.clone());
        let error = |code: u32, message: &str| {
            Some(json!({"id": id, "error": {"code": code, "message": message}}).to_string())
        };
        let reply =
            |method: &str, result: Value| Some(json!({"id": id, method: result}).to_string());
        if let Some(c) = cmd.get("connect") {
            if c["token"] == "bad" {
                return Some("close:3500:invalid token".into());
            }
            st.connects += 1;
            *client_id = format!("c{}", st.connects);
            st.conns.insert(client_id.clone(), tx.clone());
            let ping = st.ping;
            return reply(
                "connect",
                json!({"client": client_id, "ping": ping, "pong": true}),
            );
        }
        if let Some(s) = cmd.get("subscribe") {
            let channel = s["channel"].as_str().unwrap_or_default().to_owned();
            if channel.starts_with("forbidden:") {
                return error(103, "permission denied");
            }
            st.subs
                .entry(channel.clone())
                .or_default()
                .push(client_id.clone());
            let history = st.history.get(&channel).cloned().unwrap_or_default();
            let top = history.last().map_or(0, |(o, _)| *o);
            let mut result = json!({"recoverable": true, "epoch": EPOCH, "offset": top});
            if s["recover"] == true {
                let since = s["offset"].as_u64().unwrap_or(0);
                let pubs: Vec<Value> = history
                    .iter()
                    .filter(|(o, _)| *o > since)
                    .map(|(o, d)| json!({"data": d, "offset": o}))
                    .collect();
                result["publications"] = Value::Array(pubs);
                result["recovered"] = json!(s["epoch"] == EPOCH);
                result["was_recovering"] = json!(true);
            }
            return reply("subscribe", result);
        }
        if let Some(u) = cmd.get("unsubscribe") {
            let channel = u["channel"].as_str().unwrap_or_default();
            if let Some(list) = st.subs.get_mut(channel) {
                list.retain(|c| c != client_id);
            }
            return reply("unsubscribe", json!({}));
        }
        if let Some(p) = cmd.get("publish") {
            let channel = p["channel"].as_str().unwrap_or_default().to_owned();
            let data = p["data"].clone();
            drop(st);
            self.publish(&channel, data);
            return reply("publish", json!({}));
        }
        if let Some(r) = cmd.get("rpc") {
            return match r["method"].as_str() {
                Some("echo") => reply("rpc", json!({"data": r["data"]})),
                Some("slow") => None,
                _ => error(104, "method not found"),
            };
        }
        if let Some(p) = cmd.get("presence_stats") {
            let n = st
                .subs
                .get(p["channel"].as_str().unwrap_or_default())
                .map_or(0, Vec::len);
            return reply("presence_stats", json!({"num_clients": n, "num_users": n}));
        }
        if let Some(h) = cmd.get("history") {
            let channel = h["channel"].as_str().unwrap_or_default();
            let history = st.history.get(channel).cloned().unwrap_or_default();
            let pubs: Vec<Value> = history
                .iter()
                .map(|(o, d)| json!({"data": d, "offset": o}))
                .collect();
            let top = history.last().map_or(0, |(o, _)| *o);
            return reply(
                "history",
                json!({"publications": pubs, "epoch": EPOCH, "offset": top}),
            );
        }
        if cmd.get("send").is_some() {
            // Echo as a message push.
            let push = json!({"push": {"message": {"data": cmd["send"]["data"]}}}).to_string();
            let _ = tx.send(Control::Frame(push));
            return None;
        }
        error(104, "method not found")
    }
}

fn fast_backoff() -> Backoff {
    Backoff {
        min: Duration::from_millis(20),
        max: Duration::from_millis(100),
        jitter: true,
    }
}

async fn next_event(events: &mut broadcast::Receiver<ClientEvent>) -> Result<ClientEvent> {
    Ok(timeout(WAIT, events.recv()).await??)
}

async fn next_sub_event(sub: &mut switchboard_client::Subscription) -> Result<SubscriptionEvent> {
    timeout(WAIT, sub.recv_event())
        .await?
        .context("subscription ended")
}

async fn eventually(mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        if tokio::time::Instant::now() > deadline {
            bail!("condition not reached");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test]
async fn connect_subscribe_publish_receive() -> Result<()> {
    let server = FakeServer::start().await?;
    let a = Client::builder(&server.url).name("test").connect().await?;
    let b = Client::builder(&server.url).connect().await?;
    assert_eq!(a.id(), "c1");
    assert_eq!(b.id(), "c2");
    let connect = &server.commands("connect")[0];
    assert_eq!(connect["name"], "test");

    let mut sub = a.subscribe("chat:index").await?;
    assert_eq!(sub.channel(), "chat:index");
    match next_sub_event(&mut sub).await? {
        SubscriptionEvent::Subscribed {
            was_recovering,
            position,
            ..
        } => {
            assert!(!was_recovering);
            assert_eq!(position.unwrap().epoch, EPOCH);
        }
        other => bail!("unexpected {other:?}"),
    }
    b.publish("chat:index", json!({"text": "hi"})).await?;
    let p = timeout(WAIT, sub.recv()).await?.context("ended")?;
    assert_eq!(p.value(), json!({"text": "hi"}));
    assert_eq!(p.offset, 1);

    // Subscribing twice fails locally with the server's "already subscribed" code.
    let err = a.subscribe("chat:index").await.unwrap_err();
    assert!(err.is_server_code(105), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn errors_carry_server_codes_and_requests_time_out() -> Result<()> {
    let server = FakeServer::start().await?;
    let c = Client::builder(&server.url)
        .timeout(Duration::from_millis(300))
        .connect()
        .await?;
    let err = c.subscribe("forbidden:x").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Server { code: 103, message, temporary: false } if message == "permission denied"),
        "{err:?}"
    );
    let err = c.rpc("nope", json!(null)).await.unwrap_err();
    assert!(err.is_server_code(104), "{err:?}");
    let err = c.rpc("slow", json!(null)).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout), "{err:?}");
    // The client still works after a timeout.
    assert_eq!(c.rpc("echo", json!({"a": 1})).await?, json!({"a": 1}));
    Ok(())
}

#[tokio::test]
async fn helpers_and_generic_request() -> Result<()> {
    let server = FakeServer::start().await?;
    let c = Client::builder(&server.url).connect().await?;
    let mut events = c.events();
    let _sub = c.subscribe("news").await?;
    c.publish("news", json!(1)).await?;
    c.publish("news", json!(2)).await?;
    let h = c
        .history(
            "news",
            switchboard_client::HistoryOptions::default().limit(10),
        )
        .await?;
    assert_eq!(h.publications.len(), 2);
    assert_eq!(h.publications[1].json::<i32>()?, 2);
    assert_eq!(h.position.offset, 2);
    assert_eq!(h.position.epoch, EPOCH);
    let stats = c.presence_stats("news").await?;
    assert_eq!(stats.num_clients, 1);
    let v = c
        .request(json!({"rpc": {"method": "echo", "data": [1, 2]}}))
        .await?;
    assert_eq!(v, json!({"data": [1, 2]}));
    assert!(c.request(json!({"a": {}, "b": {}})).await.is_err());
    c.send(json!({"hello": true})).await?;
    match next_event(&mut events).await? {
        ClientEvent::Message(data) => assert_eq!(&data[..], br#"{"hello":true}"#),
        other => bail!("unexpected {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn concurrent_requests_are_batched_and_matched() -> Result<()> {
    let server = FakeServer::start().await?;
    let c = Client::builder(&server.url).connect().await?;
    let calls = (0..200).map(|i| {
        let c = c.clone();
        async move { c.rpc("echo", json!(i)).await }
    });
    let results = futures_join_all(calls).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r?, json!(i));
    }
    Ok(())
}

/// A minimal join_all (no futures crate needed).
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task panicked"));
    }
    out
}

#[tokio::test]
async fn answers_pings_and_reconnects_when_pings_stop() -> Result<()> {
    let server = FakeServer::start().await?;
    server.lock().ping = 1;
    let c = Client::builder(&server.url)
        .reconnect(fast_backoff())
        .max_ping_delay(Duration::from_millis(200))
        .connect()
        .await?;
    let mut events = c.events();
    // Pings batched with other lines in one frame are found and answered once each.
    server.control(
        "c1",
        Control::Frame("{}\n{\"push\":{\"channel\":\"x\",\"pub\":{\"data\":1}}}\n{}".into()),
    );
    eventually(|| server.lock().pongs == 2).await?;
    match next_event(&mut events).await? {
        ClientEvent::Push(line) => assert!(line.starts_with(b"{\"push\"")),
        other => bail!("unexpected {other:?}"),
    }
    // No more pings: after 1 s + 200 ms the client gives up on this connection.
    match next_event(&mut events).await? {
        ClientEvent::Disconnected {
            reason, reconnect, ..
        } => {
            assert_eq!(reason, "no ping");
            assert!(reconnect);
        }
        other => bail!("unexpected {other:?}"),
    }
    assert!(matches!(
        next_event(&mut events).await?,
        ClientEvent::Connected { client } if client == "c2"
    ));
    Ok(())
}

#[tokio::test]
async fn reconnects_resubscribes_and_recovers() -> Result<()> {
    let server = FakeServer::start().await?;
    let c = Client::builder(&server.url)
        .reconnect(fast_backoff())
        .connect()
        .await?;
    let mut events = c.events();
    let mut sub = c
        .subscribe_with("chat:r", SubscribeOptions::default().recoverable(true))
        .await?;
    assert!(matches!(
        next_sub_event(&mut sub).await?,
        SubscriptionEvent::Subscribed { .. }
    ));
    server.publish("chat:r", json!("one"));
    server.publish("chat:r", json!("two"));
    assert_eq!(timeout(WAIT, sub.recv()).await?.context("ended")?.offset, 1);
    assert_eq!(timeout(WAIT, sub.recv()).await?.context("ended")?.offset, 2);

    server.control("c1", Control::Close(3001, "shutdown".into()));
    match next_event(&mut events).await? {
        ClientEvent::Disconnected {
            code,
            reason,
            reconnect,
        } => assert_eq!((code, reason.as_str(), reconnect), (3001, "shutdown", true)),
        other => bail!("unexpected {other:?}"),
    }
    // Published while the client is away.
    server.publish("chat:r", json!("three"));
    assert!(matches!(
        next_event(&mut events).await?,
        ClientEvent::Connected { .. }
    ));
    assert_eq!(c.id(), "c2");

    match next_sub_event(&mut sub).await? {
        SubscriptionEvent::Subscribed {
            was_recovering,
            recovered,
            position,
        } => {
            assert!(was_recovering && recovered);
            assert_eq!(position.unwrap().offset, 3);
        }
        other => bail!("unexpected {other:?}"),
    }
    let p = timeout(WAIT, sub.recv()).await?.context("ended")?;
    assert_eq!((p.offset, p.value()), (3, json!("three")));
    let resub = server.commands("subscribe").pop().unwrap();
    assert_eq!(resub["recover"], true);
    assert_eq!(resub["offset"], 2);
    assert_eq!(resub["epoch"], EPOCH);

    // Live again.
    server.publish("chat:r", json!("four"));
    assert_eq!(timeout(WAIT, sub.recv()).await?.context("ended")?.offset, 4);
    Ok(())
}

#[tokio::test]
async fn no_reconnect_codes_end_the_client() -> Result<()> {
    let server = FakeServer::start().await?;
    let c = Client::builder(&server.url)
        .reconnect(fast_backoff())
        .connect()
        .await?;
    let mut events = c.events();
    let mut sub = c.subscribe("a").await?;
    server.control("c1", Control::Close(3503, "force disconnect".into()));
    match next_event(&mut events).await? {
        ClientEvent::Disconnected {
            code, reconnect, ..
        } => assert_eq!((code, reconnect), (3503, false)),
        other => bail!("unexpected {other:?}"),
    }
    // The subscription ends, later calls fail with the disconnect.
    loop {
        match timeout(WAIT, sub.recv_event()).await? {
            None => break,
            Some(SubscriptionEvent::Unsubscribed { code, .. }) => assert_eq!(code, 3503),
            Some(_) => {}
        }
    }
    let err = c.publish("a", json!(1)).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Disconnected { code: 3503, .. }),
        "{err:?}"
    );
    assert!(c.is_closed());
    assert_eq!(server.lock().connects, 1);
    Ok(())
}

#[tokio::test]
async fn first_connect_errors_are_returned() -> Result<()> {
    let server = FakeServer::start().await?;
    let err = Client::builder(&server.url)
        .token("bad")
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Disconnected { code: 3500, reason } if reason == "invalid token"),
        "{err:?}"
    );
    // Nothing listens on a freshly released port.
    let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    let err = Client::builder(format!("ws://127.0.0.1:{port}/"))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Io(_)), "{err:?}");
    let err = Client::builder("wss://example.com/")
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn dropping_a_subscription_unsubscribes_and_disconnect_ends_all() -> Result<()> {
    let server = FakeServer::start().await?;
    let c = Client::builder(&server.url).connect().await?;
    let sub = c.subscribe("d").await?;
    drop(sub);
    eventually(|| server.commands("unsubscribe").len() == 1).await?;
    assert_eq!(server.commands("unsubscribe")[0]["channel"], "d");
    // Subscribing again to the same channel works.
    let mut sub = c.subscribe("d").await?;
    c.unsubscribe("d").await?;
    let mut saw_unsubscribed = false;
    while let Some(e) = timeout(WAIT, sub.recv_event()).await? {
        saw_unsubscribed |= matches!(e, SubscriptionEvent::Unsubscribed { code: 0, .. });
    }
    assert!(saw_unsubscribed);

    let mut sub = c.subscribe("e").await?;
    let mut events = c.events();
    c.disconnect().await;
    assert!(matches!(
        next_event(&mut events).await?,
        ClientEvent::Disconnected {
            code: 1000,
            reconnect: false,
            ..
        }
    ));
    while timeout(WAIT, sub.recv_event()).await?.is_some() {}
    assert!(c.publish("e", json!(1)).await.is_err());
    Ok(())
}
