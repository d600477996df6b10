//! The server HTTP API (`POST /api/<method>`) against a real server: authorization, every
//! method's effect on connected WebSocket clients, and Centrifugo-compatible request and response
//! shapes (`{"result": ..}` / `{"error": {"code", "message"}}`).

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use support::{api, api_raw, hs256, start_toml, unix_now, Conn, Event, TIMEOUT};

const KEY: &str = "api-key-1";
const SECRET: &str = "connection-secret";

fn toml() -> String {
    format!(
        r#"
[api]
key = "{KEY}"
[client]
expired_close_delay = "1s"
[client.token]
hmac_secret_key = "{SECRET}"
[channel.default]
allow_subscribe_for_client = true
[[channel.namespaces]]
name = "chat"
allow_subscribe_for_client = true
"#
    )
}

async fn start() -> switchboard_http::Server {
    start_toml(&toml()).await
}

/// A connection of `user`.
async fn user(addr: std::net::SocketAddr, user: &str) -> Conn {
    Conn::connected_with_token(addr, &hs256(SECRET, json!({ "sub": user }))).await
}

fn result(reply: &Value) -> &Value {
    reply
        .get("result")
        .unwrap_or_else(|| panic!("expected a result, got {reply}"))
}

fn error_code(reply: &Value) -> u64 {
    reply["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an error, got {reply}"))
}

/// Reads until a push matching `pred` arrives (other messages are skipped); fails after TIMEOUT.
async fn next_push(conn: &mut Conn, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.next_event(left).await {
            Event::Json(v) if v.get("push").is_some_and(&pred) => return v["push"].clone(),
            Event::Json(_) => {}
            other => panic!("waiting for {what}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn api_key_in_x_api_key_or_authorization_header() {
    let server = start().await;
    let addr = server.addr();
    let body = r#"{"channel":"news","data":{}}"#;
    for headers in [
        vec![("X-API-Key", KEY)],
        vec![("Authorization", "apikey api-key-1")],
    ] {
        let r = api_raw(addr, "publish", &headers, body).await;
        assert_eq!(r.status, 200, "{headers:?}: {r:?}");
        assert_eq!(r.body, json!({"result": {}}), "{headers:?}");
    }
    for headers in [
        vec![],
        vec![("X-API-Key", "wrong")],
        vec![("X-API-Key", "")],
        vec![("Authorization", "apikey wrong")],
        vec![("Authorization", "Bearer api-key-1")],
        vec![("Authorization", "api-key-1")],
    ] {
        let r = api_raw(addr, "publish", &headers, body).await;
        assert_eq!(r.status, 401, "{headers:?}: {r:?}");
        assert_eq!(r.body["error"]["code"], 101, "{headers:?}: {r:?}");
    }
    // An unknown method with a wrong key is still 401 (no method discovery without a key).
    let r = api_raw(addr, "nope", &[], "{}").await;
    assert_eq!(r.status, 401, "{r:?}");
}

#[tokio::test]
async fn no_key_in_production_disables_the_api() {
    let server = start_toml("").await;
    let r = api_raw(server.addr(), "info", &[("X-API-Key", "")], "{}").await;
    assert_eq!(r.status, 404, "{r:?}");
    let r = api_raw(server.addr(), "info", &[("X-API-Key", "anything")], "{}").await;
    assert_eq!(r.status, 404, "{r:?}");
}

#[tokio::test]
async fn development_mode_api_works_from_loopback_without_a_key() {
    let server = support::start(|_| {}).await;
    let mut sub = Conn::connected(server.addr()).await;
    sub.subscribe("news").await;
    let reply = api(
        server.addr(),
        "",
        "publish",
        json!({"channel": "news", "data": 1}),
    )
    .await;
    assert_eq!(reply, json!({"result": {}}));
    assert_eq!(sub.next_publication().await.1["data"], 1);
}

#[tokio::test]
async fn publish_reaches_subscribers() {
    let server = start().await;
    let addr = server.addr();
    let mut sub = user(addr, "1").await;
    sub.subscribe("chat:room").await;
    let reply = api(
        addr,
        KEY,
        "publish",
        json!({"channel": "chat:room", "data": {"text": "hello"}}),
    )
    .await;
    assert_eq!(reply, json!({"result": {}}));
    let (channel, publication) = sub.next_publication().await;
    assert_eq!(channel, "chat:room");
    assert_eq!(publication["data"], json!({"text": "hello"}));
    assert!(publication.get("info").is_none(), "{publication}");

    // Centrifugo's optional fields are accepted.
    let reply = api(
        addr,
        KEY,
        "publish",
        json!({"channel": "chat:room", "data": 2, "skip_history": true,
               "tags": {"k": "v"}, "idempotency_key": "abc"}),
    )
    .await;
    assert!(reply.get("result").is_some(), "{reply}");
    assert_eq!(sub.next_publication().await.1["data"], 2);
}

#[tokio::test]
async fn publish_with_b64data() {
    let server = start().await;
    let mut sub = user(server.addr(), "1").await;
    sub.subscribe("news").await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(r#"{"a":[1,2]}"#);
    let reply = api(
        server.addr(),
        KEY,
        "publish",
        json!({"channel": "news", "b64data": b64}),
    )
    .await;
    assert_eq!(reply, json!({"result": {}}));
    assert_eq!(sub.next_publication().await.1["data"], json!({"a": [1, 2]}));
    // b64data that is not base64 or not JSON: 107.
    for bad in ["!!!", "AAEC"] {
        let reply = api(
            server.addr(),
            KEY,
            "publish",
            json!({"channel": "news", "b64data": bad}),
        )
        .await;
        assert_eq!(error_code(&reply), 107, "{bad}: {reply}");
    }
}

#[tokio::test]
async fn publish_errors_have_codes() {
    let server = start().await;
    let addr = server.addr();
    let cases = [
        (json!({"data": 1}), 107),                         // no channel
        (json!({"channel": "", "data": 1}), 107),          // empty channel
        (json!({"channel": "news"}), 107),                 // no data
        (json!({"channel": "nowhere:x", "data": 1}), 102), // unknown namespace
        (json!({"channel": 5, "data": 1}), 107),           // wrong type
    ];
    for (params, code) in cases {
        let reply = api(addr, KEY, "publish", params.clone()).await;
        assert_eq!(error_code(&reply), code, "{params}: {reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{reply}"
        );
    }
}

#[tokio::test]
async fn broadcast_publishes_into_every_channel() {
    let server = start().await;
    let addr = server.addr();
    let mut a = user(addr, "1").await;
    let mut b = user(addr, "2").await;
    a.subscribe("chat:a").await;
    b.subscribe("chat:b").await;
    let reply = api(
        addr,
        KEY,
        "broadcast",
        json!({"channels": ["chat:a", "chat:b", "nowhere:c"], "data": {"n": 1}}),
    )
    .await;
    let responses = result(&reply)["responses"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"));
    assert_eq!(responses.len(), 3, "{reply}");
    assert_eq!(responses[0], json!({"result": {}}));
    assert_eq!(responses[1], json!({"result": {}}));
    assert_eq!(responses[2]["error"]["code"], 102, "{reply}");
    assert_eq!(
        a.next_publication().await,
        ("chat:a".into(), json!({"data": {"n": 1}}))
    );
    assert_eq!(
        b.next_publication().await,
        ("chat:b".into(), json!({"data": {"n": 1}}))
    );

    let reply = api(addr, KEY, "broadcast", json!({"channels": [], "data": 1})).await;
    assert_eq!(error_code(&reply), 107, "{reply}");
}

#[tokio::test]
async fn subscribe_makes_a_server_side_subscription() {
    let server = start().await;
    let addr = server.addr();
    let mut first = user(addr, "u1").await;
    let mut second = user(addr, "u1").await;
    let mut other = user(addr, "u2").await;
    let reply = api(
        addr,
        KEY,
        "subscribe",
        json!({"user": "u1", "channel": "chat:srv", "info": {"k": 1}}),
    )
    .await;
    assert_eq!(reply, json!({"result": {}}));
    for conn in [&mut first, &mut second] {
        let push = next_push(conn, "subscribe push", |p| p.get("subscribe").is_some()).await;
        assert_eq!(push["channel"], "chat:srv", "{push}");
    }
    // Publications follow, in order, after the subscribe push.
    support::hub_publish(&server, "chat:srv", json!(1)).await;
    support::hub_publish(&server, "chat:srv", json!(2)).await;
    for conn in [&mut first, &mut second] {
        assert_eq!(conn.next_publication().await.1["data"], 1);
        assert_eq!(conn.next_publication().await.1["data"], 2);
    }
    other.expect_silence(Duration::from_millis(200)).await;

    // Only one client of the user.
    let reply = api(
        addr,
        KEY,
        "subscribe",
        json!({"user": "u1", "client": second.client_id, "channel": "chat:only"}),
    )
    .await;
    assert!(reply.get("result").is_some(), "{reply}");
    let push = next_push(&mut second, "subscribe push", |p| {
        p.get("subscribe").is_some()
    })
    .await;
    assert_eq!(push["channel"], "chat:only");
    first.expect_silence(Duration::from_millis(200)).await;

    // A user with no connections: still a result (Centrifugo does the same).
    let reply = api(
        addr,
        KEY,
        "subscribe",
        json!({"user": "ghost", "channel": "chat:x"}),
    )
    .await;
    assert!(reply.get("result").is_some(), "{reply}");
    let reply = api(addr, KEY, "subscribe", json!({"user": "u1"})).await;
    assert_eq!(error_code(&reply), 107, "{reply}");
}

#[tokio::test]
async fn unsubscribe_ends_the_subscription_with_code_2000() {
    let server = start().await;
    let addr = server.addr();
    let mut conn = user(addr, "u1").await;
    conn.subscribe("chat:room").await;
    let reply = api(
        addr,
        KEY,
        "unsubscribe",
        json!({"user": "u1", "channel": "chat:room"}),
    )
    .await;
    assert_eq!(reply, json!({"result": {}}));
    let push = next_push(&mut conn, "unsubscribe push", |p| {
        p.get("unsubscribe").is_some()
    })
    .await;
    assert_eq!(push["channel"], "chat:room", "{push}");
    assert_eq!(push["unsubscribe"]["code"], 2000, "{push}");
    support::hub_publish(&server, "chat:room", json!(1)).await;
    conn.expect_silence(Duration::from_millis(300)).await;
    // The client may subscribe again.
    conn.subscribe("chat:room").await;
}

#[tokio::test]
async fn disconnect_default_custom_and_whitelist() {
    let server = start().await;
    let addr = server.addr();

    let mut conn = user(addr, "u1").await;
    let reply = api(addr, KEY, "disconnect", json!({"user": "u1"})).await;
    assert_eq!(reply, json!({"result": {}}));
    assert_eq!(conn.expect_close(3503, TIMEOUT).await, "force disconnect");

    let mut conn = user(addr, "u1").await;
    let reply = api(
        addr,
        KEY,
        "disconnect",
        json!({"user": "u1", "disconnect": {"code": 4100, "reason": "bye"}}),
    )
    .await;
    assert!(reply.get("result").is_some(), "{reply}");
    assert_eq!(conn.expect_close(4100, TIMEOUT).await, "bye");

    // whitelist keeps a client; client targets one.
    let mut keep = user(addr, "u1").await;
    let mut drop1 = user(addr, "u1").await;
    let mut bystander = user(addr, "u2").await;
    let reply = api(
        addr,
        KEY,
        "disconnect",
        json!({"user": "u1", "whitelist": [keep.client_id]}),
    )
    .await;
    assert!(reply.get("result").is_some(), "{reply}");
    drop1.expect_close(3503, TIMEOUT).await;
    keep.assert_alive().await;
    bystander.assert_alive().await;

    let reply = api(
        addr,
        KEY,
        "disconnect",
        json!({"user": "u2", "client": bystander.client_id}),
    )
    .await;
    assert!(reply.get("result").is_some(), "{reply}");
    bystander.expect_close(3503, TIMEOUT).await;
    keep.assert_alive().await;

    // Codes outside ours and 4000..=4999: 107.
    let reply = api(
        addr,
        KEY,
        "disconnect",
        json!({"user": "u1", "disconnect": {"code": 1000, "reason": "x"}}),
    )
    .await;
    assert_eq!(error_code(&reply), 107, "{reply}");
    keep.assert_alive().await;
}

#[tokio::test]
async fn refresh_expired_closes_with_3005() {
    let server = start().await;
    let addr = server.addr();
    let mut conn = user(addr, "u1").await;
    let reply = api(addr, KEY, "refresh", json!({"user": "u1", "expired": true})).await;
    assert_eq!(reply, json!({"result": {}}));
    assert_eq!(conn.expect_close(3005, TIMEOUT).await, "connection expired");
}

#[tokio::test]
async fn refresh_expire_at_sets_the_connection_expiry() {
    let server = start().await;
    let addr = server.addr();
    let mut short = user(addr, "u1").await;
    let mut long = user(addr, "u2").await;
    let reply = api(
        addr,
        KEY,
        "refresh",
        json!({"user": "u1", "expire_at": unix_now() + 1}),
    )
    .await;
    assert!(reply.get("result").is_some(), "{reply}");
    // expire_at + expired_close_delay (1 s), with whole-second clocks.
    short.expect_close(3005, Duration::from_secs(6)).await;
    // A later expiry keeps the connection past that point.
    let reply = api(
        addr,
        KEY,
        "refresh",
        json!({"user": "u2", "expire_at": unix_now() + 60}),
    )
    .await;
    assert!(reply.get("result").is_some(), "{reply}");
    long.expect_silence(Duration::from_secs(3)).await;
    long.assert_alive().await;
}

#[tokio::test]
async fn channels_lists_active_channels_with_a_pattern() {
    let server = start().await;
    let addr = server.addr();
    let mut a = user(addr, "1").await;
    let mut b = user(addr, "2").await;
    a.subscribe("chat:one").await;
    b.subscribe("chat:one").await;
    b.subscribe("chat:two").await;
    a.subscribe("news").await;
    let reply = api(addr, KEY, "channels", json!({})).await;
    let channels = &result(&reply)["channels"];
    assert_eq!(channels["chat:one"], json!({"num_clients": 2}), "{reply}");
    assert_eq!(channels["chat:two"], json!({"num_clients": 1}), "{reply}");
    assert_eq!(channels["news"], json!({"num_clients": 1}), "{reply}");
    let reply = api(addr, KEY, "channels", json!({"pattern": "chat:*"})).await;
    let channels = result(&reply)["channels"].as_object().unwrap();
    let mut names: Vec<&String> = channels.keys().collect();
    names.sort();
    assert_eq!(names, ["chat:one", "chat:two"], "{reply}");
    let reply = api(addr, KEY, "channels", json!({"pattern": "nothing*"})).await;
    assert_eq!(result(&reply)["channels"], json!({}), "{reply}");
}

#[tokio::test]
async fn info_reports_the_node() {
    let server = start().await;
    let addr = server.addr();
    let mut a = user(addr, "1").await;
    let _b = user(addr, "1").await;
    let _c = user(addr, "2").await;
    a.subscribe("news").await;
    let reply = api(addr, KEY, "info", json!({})).await;
    let nodes = result(&reply)["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{reply}");
    let node = &nodes[0];
    assert_eq!(node["num_clients"], 3, "{reply}");
    assert_eq!(node["num_users"], 2, "{reply}");
    assert_eq!(node["num_channels"], 1, "{reply}");
    assert_eq!(node["num_subs"], 1, "{reply}");
    assert_eq!(node["uid"], server.hub().node().id.as_str(), "{reply}");
    for field in ["name", "version"] {
        assert!(node[field].as_str().is_some(), "{field}: {reply}");
    }
    assert!(node["uptime"].as_u64().is_some(), "{reply}");
    // An empty body is the same as `{}`.
    let r = api_raw(addr, "info", &[("X-API-Key", KEY)], "").await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// Centrifugo answers `batch` with the replies at the top level (`{"replies": [..]}`, no
/// `result` envelope); `cent` reads `json["replies"]` and each reply's method key.
#[tokio::test]
async fn batch_response_shape_matches_centrifugo() {
    let server = start().await;
    let reply = api(
        server.addr(),
        KEY,
        "batch",
        json!({"commands": [{"publish": {"channel": "news", "data": 1}}]}),
    )
    .await;
    assert_eq!(reply, json!({"replies": [{"publish": {}}]}));
}

#[tokio::test]
async fn batch_runs_commands_in_order_with_mixed_results() {
    let server = start().await;
    let addr = server.addr();
    let mut sub = user(addr, "1").await;
    sub.subscribe("news").await;
    let reply = api(
        addr,
        KEY,
        "batch",
        json!({"commands": [
            {"publish": {"channel": "news", "data": 1}},
            {"publish": {"channel": "nowhere:x", "data": 2}},
            {"publish": {"channel": "news", "data": 3}},
            {"no_such_method": {}},
            {"info": {}},
            {"publish": {"data": 4}},
            {"broadcast": {"channels": ["news"], "data": 5}},
            {},
        ]}),
    )
    .await;
    // Tolerate either envelope here; the shape is checked by the test above.
    let replies = reply
        .get("replies")
        .or_else(|| reply["result"].get("replies"))
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{reply}"));
    assert_eq!(replies.len(), 8, "{reply}");
    assert_eq!(replies[0], json!({"publish": {}}));
    assert_eq!(replies[1]["error"]["code"], 102, "{reply}");
    assert_eq!(replies[2], json!({"publish": {}}));
    assert_eq!(replies[3]["error"]["code"], 104, "{reply}");
    assert_eq!(replies[4]["info"]["nodes"][0]["num_clients"], 1, "{reply}");
    assert_eq!(replies[5]["error"]["code"], 107, "{reply}");
    assert!(replies[6]["broadcast"]["responses"].is_array(), "{reply}");
    assert_eq!(replies[7]["error"]["code"], 107, "{reply}");
    for expected in [1, 3, 5] {
        assert_eq!(sub.next_publication().await.1["data"], expected);
    }
}

#[tokio::test]
async fn transport_level_errors() {
    let server = start().await;
    let addr = server.addr();
    let key = [("X-API-Key", KEY)];
    let r = api_raw(addr, "no_such_method", &key, "{}").await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.body["error"]["code"], 104, "{r:?}");
    let r = api_raw(addr, "publish", &key, r#"{"channel": "news", "data": "#).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.body["error"]["code"], 107, "{r:?}");
    let r = api_raw(addr, "publish", &key, "not json").await;
    assert_eq!(r.status, 400, "{r:?}");
    // Valid JSON of the wrong shape is a method-level error.
    let r = api_raw(addr, "publish", &key, "[1,2]").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["error"]["code"], 107, "{r:?}");
    // GET on a method is not the API.
    let got = support::http_get(addr, "/api/publish").await.unwrap();
    assert_eq!(got.status, 405, "{got:?}");
}

#[tokio::test]
async fn openapi_document_is_served_as_json() {
    let server = start().await;
    let got = support::http_get(server.addr(), "/api/openapi.json")
        .await
        .unwrap();
    assert_eq!(got.status, 200, "{got:?}");
    assert!(
        got.headers
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{got:?}"
    );
    let _: Value = serde_json::from_str(&got.body).expect("valid JSON");
}

#[tokio::test]
async fn openapi_document_describes_every_method() {
    let server = start().await;
    let got = support::http_get(server.addr(), "/api/openapi.json")
        .await
        .unwrap();
    let doc: Value = serde_json::from_str(&got.body).unwrap();
    assert!(doc["openapi"].as_str().is_some(), "{doc}");
    for method in [
        "publish",
        "broadcast",
        "subscribe",
        "unsubscribe",
        "disconnect",
        "refresh",
        "presence",
        "presence_stats",
        "history",
        "history_remove",
        "channels",
        "info",
        "batch",
    ] {
        assert!(
            doc["paths"].get(format!("/api/{method}")).is_some(),
            "{method} is not documented"
        );
    }
}

/// Centrifugo requires `user` in subscribe, unsubscribe, disconnect and refresh (error 107
/// without it). Here an empty user means "anonymous connections", so a request that forgot the
/// field (or misspelled it: `{"user_id": "42"}`) acts on every anonymous connection.
#[tokio::test]
async fn user_is_required_in_user_methods() {
    let server = support::start(|_| {}).await;
    let addr = server.addr();
    let mut anon = Conn::connected(addr).await;
    for (method, params) in [
        ("subscribe", json!({"channel": "news"})),
        ("unsubscribe", json!({"channel": "news"})),
        ("refresh", json!({"expired": true})),
        ("disconnect", json!({"user_id": "42"})),
    ] {
        let reply = api(addr, "", method, params).await;
        assert_eq!(error_code(&reply), 107, "{method}: {reply}");
    }
    anon.expect_silence(Duration::from_millis(300)).await;
    anon.assert_alive().await;
}
