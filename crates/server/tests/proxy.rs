//! Backend proxies over HTTP against a real backend started by the test (axum on
//! `127.0.0.1:0`): connect, subscribe, publish, rpc, refresh and sub_refresh, with forwarded
//! headers, refusals, disconnects, and a backend that is down or slow (a clear error, never a
//! hang).

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{closed_port, hub_publish, start_toml, unix_now, Answer, Backend, Conn, TIMEOUT};

const ORIGIN: &str = "https://app.example.com";

/// A server whose proxies all point at `backend` (`/connect`, `/subscribe`, ...), with
/// namespaces `sp` (subscribe proxy), `pp` (publish proxy, clients may subscribe), `sr`
/// (subscribe and sub_refresh proxies), and `open` (clients may subscribe).
fn proxy_toml(backend: &str, extra_proxy: &str) -> String {
    format!(
        r#"
[client]
allowed_origins = ["{ORIGIN}"]
[proxy]
connect_endpoint = "{backend}/connect"
refresh_endpoint = "{backend}/refresh"
subscribe_endpoint = "{backend}/subscribe"
publish_endpoint = "{backend}/publish"
sub_refresh_endpoint = "{backend}/sub_refresh"
timeout = "300ms"
http_headers = ["X-Tenant"]
{extra_proxy}
[channel.default]
allow_subscribe_for_client = true
[[channel.namespaces]]
name = "open"
allow_subscribe_for_client = true
[[channel.namespaces]]
name = "sp"
proxy_subscribe = true
allow_publish_for_subscriber = true
[[channel.namespaces]]
name = "sp2"
proxy_subscribe = true
subscribe_proxy_endpoint = "{backend}/subscribe_sp2"
[[channel.namespaces]]
name = "pp"
allow_subscribe_for_client = true
proxy_publish = true
[[channel.namespaces]]
name = "sr"
proxy_subscribe = true
proxy_sub_refresh = true
"#
    )
}

/// The usual connect answer: the user named in the connect request's `data.user` (default
/// "56").
fn connect_answer(body: &Value) -> Answer {
    let user = body["data"]["user"].as_str().unwrap_or("56");
    Answer::json(json!({"result": {"user": user}}))
}

/// Connects through the connect proxy as `user`.
async fn connect_as(addr: std::net::SocketAddr, user: &str) -> Conn {
    let mut conn = Conn::open(addr).await;
    conn.connect_with(json!({"data": {"user": user}})).await;
    conn
}

fn error_of(reply: &Value) -> (u64, String) {
    (
        reply["error"]["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("expected an error, got {reply}")),
        reply["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test]
async fn connect_proxy_accepts_with_user_info_data_and_channels() {
    let backend = Backend::start(|r| match r.path.as_str() {
        "/connect" => Answer::json(json!({"result": {
            "user": "56",
            "info": {"name": "Zoe"},
            "data": {"welcome": true},
            "channels": ["open:feed"],
            "meta": {"plan": "gold"}
        }})),
        "/rpc" => Answer::json(json!({"result": {"data": {}}})),
        _ => Answer::json(json!({"result": {}})),
    })
    .await;
    let server = start_toml(&proxy_toml(
        &backend.url(""),
        &format!("rpc_endpoint = \"{}\"", backend.url("/rpc")),
    ))
    .await;
    let addr = server.addr();
    let headers = [
        ("Cookie", "session=abc"),
        ("Authorization", "Bearer xyz"),
        ("Origin", ORIGIN),
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Tenant", "acme"),
        ("X-Not-Forwarded", "secret"),
    ];
    let mut conn = Conn::open_with_headers(addr, &headers).await;
    let result = conn
        .connect_with(json!({"data": {"hello": 1}, "name": "test-sdk", "version": "1.2"}))
        .await;
    assert_eq!(result["data"], json!({"welcome": true}), "{result}");
    assert!(result["subs"].get("open:feed").is_some(), "{result}");

    let requests = backend.wait_for("/connect", 1, TIMEOUT).await;
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.body["client"],
        conn.client_id.as_str(),
        "{:?}",
        request.body
    );
    assert_eq!(request.body["transport"], "websocket");
    assert_eq!(request.body["protocol"], "json");
    assert_eq!(request.body["encoding"], "json");
    assert_eq!(request.body["data"], json!({"hello": 1}));
    assert_eq!(request.body["name"], "test-sdk");
    assert_eq!(request.body["version"], "1.2");
    assert!(
        request.headers["content-type"].starts_with("application/json"),
        "{:?}",
        request.headers
    );
    for (name, value) in &headers[..5] {
        assert_eq!(
            request
                .headers
                .get(&name.to_ascii_lowercase())
                .map(String::as_str),
            Some(*value),
            "{name} not forwarded: {:?}",
            request.headers
        );
    }
    assert!(
        !request.headers.contains_key("x-not-forwarded"),
        "{:?}",
        request.headers
    );

    // The server-side subscription from `channels` delivers; info names the proxy's user.
    hub_publish(&server, "open:feed", json!("x")).await;
    assert_eq!(conn.next_publication().await.1["data"], "x");
    // The proxy's user and info are the connection's (the publish proxy accepts everything).
    conn.subscribe("pp:x").await;
    conn.publish("pp:x", json!("mine")).await;
    let (_, publication) = conn.next_publication().await;
    assert_eq!(publication["info"]["user"], "56", "{publication}");
    assert_eq!(publication["info"]["conn_info"], json!({"name": "Zoe"}));
    // Proxies get the user and the meta.
    conn.request_ok(json!({"rpc": {"method": "m", "data": {}}}))
        .await;
    let rpc = backend.wait_for("/rpc", 1, TIMEOUT).await;
    assert_eq!(rpc[0].body["user"], "56", "{:?}", rpc[0].body);
    assert_eq!(
        rpc[0].body["meta"],
        json!({"plan": "gold"}),
        "{:?}",
        rpc[0].body
    );
    // Headers are forwarded to every proxy, not only connect.
    assert_eq!(
        rpc[0].headers.get("x-tenant").map(String::as_str),
        Some("acme")
    );
}

#[tokio::test]
async fn connect_proxy_error_is_the_clients_error() {
    let backend =
        Backend::start(|_| Answer::json(json!({"error": {"code": 1000, "message": "nope"}}))).await;
    let server = start_toml(&proxy_toml(&backend.url(""), "")).await;
    let mut conn = Conn::open(server.addr()).await;
    let reply = conn.request(json!({"connect": {}})).await;
    assert_eq!(error_of(&reply), (1000, "nope".to_string()), "{reply}");
}

#[tokio::test]
async fn connect_proxy_disconnect_closes_the_connection() {
    let backend =
        Backend::start(|_| Answer::json(json!({"disconnect": {"code": 4501, "reason": "banned"}})))
            .await;
    let server = start_toml(&proxy_toml(&backend.url(""), "")).await;
    let mut conn = Conn::open(server.addr()).await;
    let id = conn.id();
    conn.send_text(json!({"id": id, "connect": {}}).to_string())
        .await;
    assert_eq!(conn.expect_close(4501, TIMEOUT).await, "banned");
}

#[tokio::test]
async fn backend_down_gives_error_100_quickly() {
    let down = format!("http://127.0.0.1:{}", closed_port());
    let server = start_toml(&proxy_toml(&down, "")).await;
    let mut conn = Conn::open(server.addr()).await;
    let started = Instant::now();
    let reply = conn.request(json!({"connect": {}})).await;
    let elapsed = started.elapsed();
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    assert_eq!(reply["error"]["temporary"], true, "{reply}");
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    println!("backend down: error after {elapsed:?}");
}

#[tokio::test]
async fn slow_backend_gives_error_100_within_the_timeout() {
    let backend = Backend::start(|r| {
        Answer::slow(
            json!({"result": {"user": "1"}}),
            if r.path == "/connect" {
                Duration::from_secs(3)
            } else {
                Duration::ZERO
            },
        )
    })
    .await;
    let server = start_toml(&proxy_toml(&backend.url(""), "")).await;
    let mut conn = Conn::open(server.addr()).await;
    let started = Instant::now();
    let reply = conn.request(json!({"connect": {}})).await;
    let elapsed = started.elapsed();
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    assert_eq!(reply["error"]["temporary"], true, "{reply}");
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(1),
        "proxy.timeout is 300ms, the error came after {elapsed:?}"
    );
    println!("slow backend: error after {elapsed:?}");
}

#[tokio::test]
async fn backend_http_error_or_bad_json_gives_error_100() {
    let backend = Backend::start(|r| match r.path.as_str() {
        "/connect" => Answer::json(json!({"result": {"user": "1"}})),
        "/subscribe" => Answer {
            status: 500,
            body: json!({"result": {}}),
            delay: Duration::ZERO,
        },
        _ => Answer::json(json!([1, 2, 3])),
    })
    .await;
    let server = start_toml(&proxy_toml(&backend.url(""), "")).await;
    let mut conn = Conn::open(server.addr()).await;
    conn.connect().await;
    let reply = conn
        .request(json!({"subscribe": {"channel": "sp:a"}}))
        .await;
    assert_eq!(reply["error"]["code"], 100, "HTTP 500: {reply}");
    conn.subscribe("pp:a").await;
    let reply = conn
        .request(json!({"publish": {"channel": "pp:a", "data": 1}}))
        .await;
    assert_eq!(reply["error"]["code"], 100, "not an answer object: {reply}");
    conn.assert_alive().await;
}

#[tokio::test]
async fn subscribe_proxy_accepts_with_info_and_data_or_refuses() {
    let backend = Backend::start(|r| match r.path.as_str() {
        "/connect" => connect_answer(&r.body),
        "/subscribe" if r.body["channel"] == "sp:no" => {
            Answer::json(json!({"error": {"code": 1403, "message": "not yours"}}))
        }
        "/subscribe" if r.body["channel"] == "sp:kick" => {
            Answer::json(json!({"disconnect": {"code": 4403, "reason": "go away"}}))
        }
        "/subscribe" => Answer::json(json!({"result": {
            "info": {"role": "reader"}, "data": {"motd": "hi"}
        }})),
        "/subscribe_sp2" => Answer::json(json!({"result": {"data": "from sp2"}})),
        _ => Answer::json(json!({"result": {}})),
    })
    .await;
    let server = start_toml(&proxy_toml(&backend.url(""), "")).await;
    let addr = server.addr();
    let mut conn = connect_as(addr, "7").await;
    let result = conn
        .request_ok(json!({"subscribe": {"channel": "sp:room", "data": {"why": "curious"}}}))
        .await;
    assert_eq!(result["data"], json!({"motd": "hi"}), "{result}");
    let requests = backend.wait_for("/subscribe", 1, TIMEOUT).await;
    let body = &requests[0].body;
    assert_eq!(body["channel"], "sp:room", "{body}");
    assert_eq!(body["user"], "7", "{body}");
    assert_eq!(body["client"], conn.client_id.as_str(), "{body}");
    assert_eq!(body["data"], json!({"why": "curious"}), "{body}");

    // The subscription works, and the proxy's info is this subscriber's channel info.
    hub_publish(&server, "sp:room", json!(1)).await;
    assert_eq!(conn.next_publication().await.1["data"], 1);
    conn.publish("sp:room", json!(2)).await;
    let (_, publication) = conn.next_publication().await;
    assert_eq!(
        publication["info"]["chan_info"],
        json!({"role": "reader"}),
        "{publication}"
    );

    // The namespace's own endpoint overrides the global one.
    let result = conn
        .request_ok(json!({"subscribe": {"channel": "sp2:x"}}))
        .await;
    assert_eq!(result["data"], "from sp2", "{result}");

    let reply = conn
        .request(json!({"subscribe": {"channel": "sp:no"}}))
        .await;
    assert_eq!(error_of(&reply), (1403, "not yours".into()), "{reply}");
    hub_publish(&server, "sp:no", json!(1)).await;
    conn.expect_silence(Duration::from_millis(200)).await;

    let id = conn.id();
    conn.send_text(json!({"id": id, "subscribe": {"channel": "sp:kick"}}).to_string())
        .await;
    assert_eq!(conn.expect_close(4403, TIMEOUT).await, "go away");
}

#[tokio::test]
async fn publish_proxy_may_replace_data_or_refuse() {
    let backend = Backend::start(|r| match r.path.as_str() {
        "/connect" => connect_answer(&r.body),
        "/publish" if r.body["data"]["bad"] == true => {
            Answer::json(json!({"error": {"code": 1001, "message": "refused"}}))
        }
        "/publish" if r.body["data"]["replace"] == true => {
            Answer::json(json!({"result": {"data": {"replaced": true}}}))
        }
        _ => Answer::json(json!({"result": {}})),
    })
    .await;
    let server = start_toml(&proxy_toml(&backend.url(""), "")).await;
    let addr = server.addr();
    let mut publisher = connect_as(addr, "p").await;
    let mut subscriber = connect_as(addr, "s").await;
    subscriber.subscribe("pp:room").await;

    publisher.publish("pp:room", json!({"text": "as is"})).await;
    let (_, publication) = subscriber.next_publication().await;
    assert_eq!(publication["data"], json!({"text": "as is"}));
    assert_eq!(publication["info"]["user"], "p", "{publication}");

    publisher.publish("pp:room", json!({"replace": true})).await;
    assert_eq!(
        subscriber.next_publication().await.1["data"],
        json!({"replaced": true})
    );

    let reply = publisher
        .request(json!({"publish": {"channel": "pp:room", "data": {"bad": true}}}))
        .await;
    assert_eq!(error_of(&reply), (1001, "refused".into()), "{reply}");
    subscriber.expect_silence(Duration::from_millis(300)).await;

    let requests = backend.wait_for("/publish", 3, TIMEOUT).await;
    assert_eq!(requests[0].body["channel"], "pp:room");
    assert_eq!(requests[0].body["user"], "p");
    assert_eq!(requests[0].body["data"], json!({"text": "as is"}));
}

#[tokio::test]
async fn rpc_proxy_forwards_method_and_data() {
    let backend = Backend::start(|r| match r.path.as_str() {
        "/connect" => connect_answer(&r.body),
        "/rpc" if r.body["method"] == "fail" => {
            Answer::json(json!({"error": {"code": 1500, "message": "rpc failed"}}))
        }
        "/rpc" => {
            let a = r.body["data"]["a"].as_i64().unwrap_or(0);
            let b = r.body["data"]["b"].as_i64().unwrap_or(0);
            Answer::json(json!({"result": {"data": {"sum": a + b}}}))
        }
        _ => Answer::json(json!({"result": {}})),
    })
    .await;
    let server = start_toml(&proxy_toml(
        &backend.url(""),
        &format!("rpc_endpoint = \"{}\"", backend.url("/rpc")),
    ))
    .await;
    let mut conn = connect_as(server.addr(), "9").await;
    let result = conn
        .request_ok(json!({"rpc": {"method": "sum", "data": {"a": 1, "b": 2}}}))
        .await;
    assert_eq!(result["data"], json!({"sum": 3}), "{result}");
    let requests = backend.wait_for("/rpc", 1, TIMEOUT).await;
    assert_eq!(requests[0].body["method"], "sum");
    assert_eq!(requests[0].body["data"], json!({"a": 1, "b": 2}));
    assert_eq!(requests[0].body["user"], "9");

    let reply = conn
        .request(json!({"rpc": {"method": "fail", "data": {}}}))
        .await;
    assert_eq!(error_of(&reply), (1500, "rpc failed".into()), "{reply}");
    conn.assert_alive().await;
}

#[tokio::test]
async fn rpc_without_endpoint_is_not_available() {
    let backend = Backend::start(|r| connect_answer(&r.body)).await;
    let server = start_toml(&proxy_toml(&backend.url(""), "")).await;
    let mut conn = connect_as(server.addr(), "9").await;
    let code = conn
        .request_error(json!({"rpc": {"method": "sum", "data": {}}}))
        .await;
    // Centrifugo answers 108 "not available" when there is no RPC handler at all.
    assert_eq!(code, 108);
}

#[tokio::test]
async fn refresh_proxy_extends_or_expires_the_connection() {
    let backend = Backend::start(|r| match r.path.as_str() {
        "/connect" => {
            let user = r.body["data"]["user"].as_str().unwrap_or("keep");
            Answer::json(json!({"result": {"user": user, "expire_at": unix_now() + 1}}))
        }
        "/refresh" if r.body["user"] == "keep" => {
            Answer::json(json!({"result": {"expire_at": unix_now() + 60}}))
        }
        "/refresh" => Answer::json(json!({"result": {"expired": true}})),
        _ => Answer::json(json!({"result": {}})),
    })
    .await;
    let server = start_toml(&proxy_toml(&backend.url(""), "")).await;
    let addr = server.addr();
    let started = Instant::now();
    let mut keep = Conn::open(addr).await;
    let result = keep.connect_with(json!({"data": {"user": "keep"}})).await;
    assert_eq!(result["expires"], true, "{result}");
    let mut expire = connect_as(addr, "expire").await;

    // The backend is asked at expiry (about 1 s).
    assert_eq!(
        expire.expect_close(3005, Duration::from_secs(5)).await,
        "connection expired"
    );
    let requests = backend.wait_for("/refresh", 2, TIMEOUT).await;
    for r in &requests {
        let at = r.at.duration_since(started);
        assert!(at < Duration::from_secs(3), "refresh asked late: {at:?}");
        assert!(r.body["client"].as_str().is_some(), "{:?}", r.body);
    }
    // The extended connection stays past its first expiry and the grace period.
    keep.expect_silence(Duration::from_secs(3)).await;
    keep.assert_alive().await;
    assert_eq!(
        backend
            .requests_to("/refresh")
            .iter()
            .filter(|r| r.body["user"] == "keep")
            .count(),
        1,
        "asked once, then not again before the new expiry"
    );
}

#[tokio::test]
async fn sub_refresh_proxy_extends_or_ends_the_subscription() {
    let backend = Backend::start(|r| match r.path.as_str() {
        "/connect" => connect_answer(&r.body),
        "/subscribe" => Answer::json(json!({"result": {"expire_at": unix_now() + 1}})),
        "/sub_refresh" if r.body["channel"] == "sr:keep" => {
            Answer::json(json!({"result": {"expire_at": unix_now() + 60}}))
        }
        "/sub_refresh" => Answer::json(json!({"result": {"expired": true}})),
        _ => Answer::json(json!({"result": {}})),
    })
    .await;
    let server = start_toml(&proxy_toml(&backend.url(""), "")).await;
    let mut conn = connect_as(server.addr(), "4").await;
    let result = conn
        .request_ok(json!({"subscribe": {"channel": "sr:keep"}}))
        .await;
    assert_eq!(result["expires"], true, "{result}");
    conn.request_ok(json!({"subscribe": {"channel": "sr:end"}}))
        .await;

    let push = conn.next_json().await;
    assert_eq!(push["push"]["channel"], "sr:end", "{push}");
    assert_eq!(push["push"]["unsubscribe"]["code"], 2501, "{push}");
    let requests = backend.wait_for("/sub_refresh", 2, TIMEOUT).await;
    for r in &requests {
        assert_eq!(r.body["user"], "4", "{:?}", r.body);
    }
    conn.expect_silence(Duration::from_secs(2)).await;
    hub_publish(&server, "sr:keep", json!("kept")).await;
    assert_eq!(conn.next_publication().await.1["data"], "kept");
    hub_publish(&server, "sr:end", json!("gone")).await;
    conn.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn token_clients_skip_the_connect_proxy() {
    let backend =
        Backend::start(|_| Answer::json(json!({"error": {"code": 1000, "message": "nope"}}))).await;
    let toml = proxy_toml(&backend.url(""), "").replace(
        "[proxy]",
        "[client.token]\nhmac_secret_key = \"s\"\n[proxy]",
    );
    let server = start_toml(&toml).await;
    let token = support::hs256("s", json!({"sub": "1"}));
    Conn::connected_with_token(server.addr(), &token)
        .await
        .assert_alive()
        .await;
    assert!(backend.requests_to("/connect").is_empty());
}
