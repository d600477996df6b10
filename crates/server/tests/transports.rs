//! The HTTP transports and the unidirectional ones against a real server: `uni_websocket`,
//! recovery for unidirectional clients, server-side subscriptions configured per namespace,
//! metrics labelled by transport, the transport name proxies see, and the limits the HTTP
//! streams share with WebSocket (queue limit, pings, handshake timeout, body limits, shutdown).

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{
    eventually, hs256, hub_publish, metric_value, metrics, start, Answer, Backend, Conn, EmuStream,
    EmuTarget, TIMEOUT,
};
use switchboard_hub::NamespaceOptions;
use switchboard_proto::DisconnectCode;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "transports-secret";

/// Every client transport on, tokens with [`SECRET`], namespace `rec` with history.
fn base(c: &mut switchboard_http::config::Config) {
    c.client.token.hmac_secret_key = SECRET.into();
    let mut rec = NamespaceOptions::default();
    rec.name = "rec".into();
    rec.history_size = 100;
    rec.history_ttl = Duration::from_secs(300);
    c.channel.namespaces.push(rec);
}

fn token(claims: Value) -> String {
    hs256(SECRET, claims)
}

// ---- uni_websocket ----

/// A unidirectional WebSocket: one connect request in, pushes out, one per message.
struct UniWs {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl UniWs {
    /// Connects and sends `request` as the first message (`None`: send nothing; `query`:
    /// put it in `cf_connect` instead).
    async fn open(addr: SocketAddr, request: Option<Value>, query: bool) -> Self {
        let mut url = format!("ws://{addr}/connection/uni_websocket");
        if let (Some(r), true) = (&request, query) {
            url = reqwest::Url::parse_with_params(&url, &[("cf_connect", r.to_string())])
                .unwrap()
                .to_string();
        }
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        if let (Some(r), false) = (request, query) {
            ws.send(Message::Text(r.to_string().into())).await.unwrap();
        }
        Self { ws }
    }

    /// The next push; `Err(close code)` when the connection closed instead.
    async fn next(&mut self) -> Result<Value, u16> {
        loop {
            match tokio::time::timeout(TIMEOUT, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    assert!(!t.contains('\n'), "one push per message: {t}");
                    return Ok(serde_json::from_str(&t).unwrap());
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Err(frame.map_or(1005, |f| u16::from(f.code)))
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => return Err(1006),
                Err(_) => panic!("no push within {TIMEOUT:?}"),
            }
        }
    }
}

#[tokio::test]
async fn uni_websocket_connect_request_then_pushes() {
    let server = start(base).await;
    let addr = server.addr();
    for query in [false, true] {
        let channel = format!("uniws-{query}");
        let request = json!({"token": token(json!({"sub": "u1", "channels": [channel]}))});
        let mut ws = UniWs::open(addr, Some(request), query).await;
        let connect = ws.next().await.unwrap();
        assert!(connect["connect"]["client"].is_string(), "{connect}");
        assert!(
            connect["connect"]["subs"].get(&channel).is_some(),
            "{connect}"
        );
        // Whatever the client sends afterwards is not answered.
        ws.ws
            .send(Message::Text(r#"{"id":2,"ping":{}}"#.into()))
            .await
            .unwrap();
        hub_publish(&server, &channel, json!({"n": 1})).await;
        let publication = ws.next().await.unwrap();
        assert_eq!(publication["channel"], channel.as_str(), "{publication}");
        assert_eq!(publication["pub"]["data"], json!({"n": 1}));
        // A server-side disconnect: the disconnect push, then the close frame.
        server
            .hub()
            .disconnect_user("u1", None, &[], DisconnectCode::custom(4501, "bye"));
        let push = ws.next().await.unwrap();
        assert_eq!(push["disconnect"]["code"], 4501, "{push}");
        assert_eq!(ws.next().await, Err(4501));
    }
}

#[tokio::test]
async fn uni_websocket_refusals_end_with_their_code() {
    let server = start(|c| {
        base(c);
        c.client.handshake_timeout = Duration::from_millis(500);
    })
    .await;
    let addr = server.addr();
    let cases = [
        (Some(json!({"token": "not.a.token"})), 3500),
        (Some(json!([1, 2])), 3501),
        // Nothing sent: the handshake timeout (3502 "stale").
        (None, DisconnectCode::STALE.code),
    ];
    for (request, code) in cases {
        let mut ws = UniWs::open(addr, request.clone(), false).await;
        let push = ws.next().await.unwrap();
        assert_eq!(push["disconnect"]["code"], code, "{request:?}: {push}");
        assert_eq!(ws.next().await, Err(code), "{request:?}");
    }
    // Off in production unless turned on.
    let off = start(|c| c.transports.uni_websocket = false).await;
    let response = reqwest::get(format!("http://{}/connection/uni_websocket", off.addr()))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

// ---- recovery for unidirectional clients ----

/// Opens a unidirectional stream of `transport` with `request`; the first message must be the
/// connect push, which is returned with the stream.
async fn uni_open(addr: SocketAddr, transport: &str, request: Value) -> (UniStream, Value) {
    let mut stream = match transport {
        "uni_websocket" => UniStream::Ws(UniWs::open(addr, Some(request), false).await),
        _ => UniStream::Http(EmuStream::open_uni(addr, transport, request).await),
    };
    let connect = stream.next().await;
    assert!(connect.get("connect").is_some(), "{transport}: {connect}");
    (stream, connect["connect"].clone())
}

enum UniStream {
    Ws(UniWs),
    Http(EmuStream),
}

impl UniStream {
    async fn next(&mut self) -> Value {
        match self {
            UniStream::Ws(ws) => ws.next().await.expect("a push, not a close"),
            UniStream::Http(s) => s.next(TIMEOUT).await.expect("a push, not the end"),
        }
    }

    /// The next push that is not a ping.
    async fn next_push(&mut self) -> Value {
        loop {
            let m = self.next().await;
            if m != json!({}) {
                return m;
            }
        }
    }
}

/// A reconnect that passes its last position gets what it missed, in the connect push's
/// `subs`, then the live publications after it; a position from another epoch gets
/// `recovered: false`.
async fn uni_recovery(transport: &str) {
    let server = start(base).await;
    let addr = server.addr();
    let channel = format!("rec:{transport}");
    let request = json!({"token": token(json!({"sub": "r", "channels": [channel]}))});
    for n in 1..=2 {
        hub_publish(&server, &channel, json!({ "n": n })).await;
    }
    let (stream, connect) = uni_open(addr, transport, request.clone()).await;
    let sub = &connect["subs"][&channel];
    assert_eq!(sub["recoverable"], true, "{connect}");
    assert_eq!(sub["offset"], 2, "{connect}");
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    drop(stream);
    for n in 3..=5 {
        hub_publish(&server, &channel, json!({ "n": n })).await;
    }

    let mut again = request.clone();
    again["subs"] = json!({ &channel: {"recover": true, "offset": 2, "epoch": epoch} });
    let (mut stream, connect) = uni_open(addr, transport, again).await;
    let sub = &connect["subs"][&channel];
    assert_eq!(sub["was_recovering"], true, "{connect}");
    assert_eq!(sub["recovered"], true, "{connect}");
    let recovered: Vec<&Value> = sub["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("no publications in {connect}"))
        .iter()
        .map(|p| &p["data"]["n"])
        .collect();
    assert_eq!(recovered, [3, 4, 5], "{transport}: {connect}");
    assert_eq!(sub["offset"], 5);
    // The next live publication follows, once.
    hub_publish(&server, &channel, json!({"n": 6})).await;
    let push = stream.next_push().await;
    assert_eq!(push["pub"]["data"]["n"], 6, "{push}");
    assert_eq!(push["pub"]["offset"], 6, "{push}");

    // A position from another epoch cannot be recovered.
    let mut stale = request;
    stale["subs"] = json!({ &channel: {"recover": true, "offset": 1, "epoch": "other"} });
    let (_stream, connect) = uni_open(addr, transport, stale).await;
    let sub = &connect["subs"][&channel];
    assert_eq!(sub["was_recovering"], true, "{connect}");
    assert!(sub.get("recovered").is_none(), "{connect}");
    assert!(sub.get("publications").is_none(), "{connect}");
    assert_eq!(sub["epoch"], epoch.as_str());
}

#[tokio::test]
async fn uni_http_stream_recovers_missed_publications() {
    uni_recovery("uni_http_stream").await;
}

#[tokio::test]
async fn uni_sse_recovers_missed_publications() {
    uni_recovery("uni_sse").await;
}

#[tokio::test]
async fn uni_websocket_recovers_missed_publications() {
    uni_recovery("uni_websocket").await;
}

// ---- server-side subscriptions per namespace ----

#[tokio::test]
async fn namespaces_subscribe_every_client_on_connect() {
    let server = start(|c| {
        base(c);
        c.channel.default.subscribe_on_connect = vec!["announcements".into()];
        let mut news = NamespaceOptions::default();
        news.name = "news".into();
        news.subscribe_on_connect = vec!["global".into()];
        c.channel.namespaces.push(news);
    })
    .await;
    let addr = server.addr();
    // A unidirectional client without a token (development mode allows anonymous ones).
    let (mut stream, connect) = uni_open(addr, "uni_http_stream", json!({})).await;
    let subs: BTreeSet<&str> = connect["subs"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(subs, BTreeSet::from(["announcements", "news:global"]));
    hub_publish(&server, "news:global", json!("extra")).await;
    let push = stream.next_push().await;
    assert_eq!(push["channel"], "news:global", "{push}");
    // A bidirectional client too, next to its token's channels.
    let mut conn = Conn::open(addr).await;
    let reply = conn
        .connect_with(json!({"token": token(json!({"sub": "w", "channels": ["own"]}))}))
        .await;
    let subs: BTreeSet<&str> = reply["subs"]
        .as_object()
        .unwrap_or_else(|| panic!("{reply}"))
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        subs,
        BTreeSet::from(["announcements", "news:global", "own"])
    );
}

#[test]
fn subscribe_on_connect_names_are_checked() {
    let mut channel = switchboard_hub::ChannelConfig::default();
    channel.default.subscribe_on_connect = vec!["fine".into(), "news:global".into(), "".into()];
    let problems = channel.validate();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("subscribe_on_connect[1]"),
        "{problems:?}"
    );
}

// ---- metrics and transport names ----

/// One connection of each transport, connected with `request` (a connect request object).
struct OneOfEach {
    _ws: Conn,
    _streams: Vec<EmuStream>,
    _uni_ws: UniWs,
}

async fn one_of_each(addr: SocketAddr, request: Value) -> OneOfEach {
    let mut ws = Conn::open(addr).await;
    ws.connect_with(request.clone()).await;
    let mut streams = Vec::new();
    for transport in ["http_stream", "sse"] {
        let mut s = EmuStream::open(addr, transport, request.clone()).await;
        let reply = s.reply(1).await;
        assert!(reply.get("connect").is_some(), "{transport}: {reply}");
        streams.push(s);
    }
    for transport in ["uni_http_stream", "uni_sse"] {
        let mut s = EmuStream::open_uni(addr, transport, request.clone()).await;
        let connect = s.next(TIMEOUT).await.unwrap();
        assert!(connect.get("connect").is_some(), "{transport}: {connect}");
        streams.push(s);
    }
    let mut uni_ws = UniWs::open(addr, Some(request), false).await;
    assert!(uni_ws.next().await.unwrap().get("connect").is_some());
    OneOfEach {
        _ws: ws,
        _streams: streams,
        _uni_ws: uni_ws,
    }
}

const ALL: [&str; 6] = [
    "websocket",
    "http_stream",
    "sse",
    "uni_http_stream",
    "uni_sse",
    "uni_websocket",
];

#[tokio::test]
async fn metrics_are_labelled_by_transport() {
    // Pings, so that the server notices the HTTP streams' clients are gone (an HTTP server
    // learns it when it writes), without pong deadlines.
    let server = start(|c| {
        base(c);
        c.client.ping_interval = Duration::from_secs(1);
        c.client.pong_timeout = Duration::ZERO;
    })
    .await;
    let addr = server.addr();
    let request = json!({"token": token(json!({"sub": "m", "channels": ["metered"]}))});
    let each = one_of_each(addr, request).await;
    hub_publish(&server, "metered", json!({"n": 1})).await;
    let series = |family: &str, t: &str| format!("{family}{{transport=\"{t}\"}}");
    let written = eventually(TIMEOUT, || async {
        let text = metrics(addr).await;
        ALL.iter().all(|t| {
            metric_value(
                &text,
                &series("switchboard_transport_messages_out_total", t),
            ) >= 2.0
        })
    })
    .await;
    let text = metrics(addr).await;
    assert!(
        written,
        "connect reply and publication written by each:\n{text}"
    );
    for t in ALL {
        assert_eq!(
            metric_value(&text, &series("switchboard_transport_connections", t)),
            1.0,
            "{t}"
        );
        assert_eq!(
            metric_value(
                &text,
                &series("switchboard_transport_connections_accepted_total", t)
            ),
            1.0,
            "{t}"
        );
        assert!(metric_value(&text, &series("switchboard_transport_bytes_out_total", t)) > 0.0);
        assert!(
            metric_value(&text, &series("switchboard_transport_messages_in_total", t)) >= 1.0,
            "{t}: the connect command"
        );
    }
    drop(each);
    let closed = eventually(TIMEOUT, || async {
        let text = metrics(addr).await;
        ALL.iter()
            .all(|t| metric_value(&text, &series("switchboard_transport_connections", t)) == 0.0)
    })
    .await;
    assert!(closed, "{}", metrics(addr).await);
}

#[tokio::test]
async fn the_connect_proxy_sees_the_real_transport_name() {
    let backend = Backend::start(|_| Answer::json(json!({"result": {"user": "p"}}))).await;
    let url = backend.url("/connect");
    let server = start(move |c| {
        base(c);
        c.client.token.hmac_secret_key = String::new();
        c.proxy.connect_endpoint = url;
    })
    .await;
    let _each = one_of_each(server.addr(), json!({})).await;
    let seen: BTreeSet<String> = backend
        .requests_to("/connect")
        .iter()
        .map(|r| r.body["transport"].as_str().unwrap_or_default().to_string())
        .collect();
    let want: BTreeSet<String> = ALL.iter().map(|t| t.to_string()).collect();
    assert_eq!(seen, want);
}

// ---- limits shared with WebSocket ----

#[tokio::test]
async fn a_stream_that_is_not_read_is_disconnected_as_slow() {
    let server = start(|c| {
        base(c);
        c.client.max_queue_bytes = 256 * 1024;
    })
    .await;
    let addr = server.addr();
    for transport in ["http_stream", "uni_http_stream"] {
        let channel = format!("slow-{transport}");
        let request = json!({"token": token(json!({"sub": "s", "channels": [channel]}))});
        let stream = if transport == "http_stream" {
            EmuStream::open(addr, transport, request).await
        } else {
            EmuStream::open_uni(addr, transport, request).await
        };
        let before = server
            .hub()
            .metrics()
            .disconnects_with(DisconnectCode::SLOW);
        let big = "x".repeat(64 * 1024);
        let mut published = 0;
        // Never read: the socket buffers fill, then the queue, then 3008.
        while server
            .hub()
            .metrics()
            .disconnects_with(DisconnectCode::SLOW)
            == before
        {
            assert!(
                published < 4000,
                "{transport}: not disconnected after {published} MiB/16"
            );
            hub_publish(&server, &channel, json!(big)).await;
            published += 1;
            if published % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        drop(stream);
    }
}

#[tokio::test]
async fn emulated_clients_that_do_not_answer_pings_get_3012() {
    let server = start(|c| {
        base(c);
        c.client.ping_interval = Duration::from_secs(1);
        c.client.pong_timeout = Duration::from_millis(500);
    })
    .await;
    for transport in ["http_stream", "sse"] {
        let mut stream = EmuStream::open(server.addr(), transport, json!({})).await;
        let connect = stream.reply(1).await;
        assert_eq!(connect["connect"]["pong"], true, "{connect}");
        let rest = stream.rest(Duration::from_secs(5)).await;
        assert_eq!(rest.first(), Some(&json!({})), "a ping first: {rest:?}");
        let last = rest.last().unwrap();
        assert_eq!(
            last["push"]["disconnect"]["code"], 3012,
            "{transport}: {rest:?}"
        );
    }
    // Unidirectional clients get pings and owe no pong.
    let mut stream = EmuStream::open_uni(server.addr(), "uni_http_stream", json!({})).await;
    let connect = stream.next(TIMEOUT).await.unwrap();
    assert!(connect["connect"].get("pong").is_none(), "{connect}");
    for _ in 0..3 {
        assert_eq!(stream.next(TIMEOUT).await, Some(json!({})));
    }
}

#[tokio::test]
async fn request_bodies_are_limited() {
    let server = start(|c| {
        base(c);
        c.client.max_message_size = 1024;
    })
    .await;
    let addr = server.addr();
    let big = json!({"data": "x".repeat(2000)});
    for transport in ["http_stream", "sse"] {
        let first = json!({"id": 1, "connect": big}).to_string();
        let status = EmuStream::try_open(addr, transport, first).await.err();
        assert_eq!(status, Some(413), "{transport}");
    }
    for transport in ["uni_http_stream", "uni_sse"] {
        let status = EmuStream::try_open(addr, transport, big.to_string())
            .await
            .err();
        assert_eq!(status, Some(413), "{transport}");
    }
    let url = reqwest::Url::parse_with_params(
        &format!("ws://{addr}/connection/uni_websocket"),
        &[("cf_connect", big.to_string())],
    )
    .unwrap();
    let refused = tokio_tungstenite::connect_async(url.to_string()).await;
    assert!(
        format!("{refused:?}").contains("413"),
        "uni_websocket: {refused:?}"
    );
    // `/emulation`: twice the message size (for the JSON escaping), then 413.
    let target = EmuTarget {
        addr,
        session: "any".into(),
        node: String::new(),
    };
    let status = target
        .post(&[json!({"id": 2, "rpc": {"data": "x".repeat(5000)}})])
        .await;
    assert_eq!(status, 413);
    assert_eq!(target.post(&[json!({"id": 2, "rpc": {}})]).await, 404);
}

#[tokio::test]
async fn shutdown_ends_every_stream_with_3001() {
    let server = start(base).await;
    let addr = server.addr();
    let mut streams = Vec::new();
    for transport in ["http_stream", "sse"] {
        let mut s = EmuStream::open(addr, transport, json!({})).await;
        s.reply(1).await;
        streams.push((transport, true, s));
    }
    for transport in ["uni_http_stream", "uni_sse"] {
        let mut s = EmuStream::open_uni(addr, transport, json!({})).await;
        s.next(TIMEOUT).await.unwrap();
        streams.push((transport, false, s));
    }
    let mut uni_ws = UniWs::open(addr, Some(json!({})), false).await;
    uni_ws.next().await.unwrap();
    let shutdown = tokio::spawn(server.shutdown());
    for (transport, bidirectional, mut s) in streams {
        let rest = s.rest(TIMEOUT).await;
        let last = rest.last().cloned().unwrap_or_default();
        let disconnect = if bidirectional {
            &last["push"]["disconnect"]
        } else {
            &last["disconnect"]
        };
        assert_eq!(disconnect["code"], 3001, "{transport}: {rest:?}");
        assert_eq!(disconnect["reason"], "shutdown", "{transport}: {rest:?}");
    }
    assert_eq!(uni_ws.next().await.unwrap()["disconnect"]["code"], 3001);
    assert_eq!(uni_ws.next().await, Err(3001));
    tokio::time::timeout(TIMEOUT, shutdown)
        .await
        .expect("shutdown did not finish")
        .unwrap();
}
