//! Hardening against misbehaving clients (issue 11), against a real server over TCP on
//! 127.0.0.1: WebSocket ping floods, connections that send nothing or trickle a request,
//! unauthenticated API bodies, non-ASCII `Origin` headers, `nbf` in tokens.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde_json::json;
use support::{eventually, hs256, start, unix_now, Conn, TIMEOUT};
use switchboard_ws::{encode_message, ClientHandshake, Decoder, Message, Role, WsConfig, WsSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Opens a WebSocket to the server and returns the raw stream (nothing sent after the
/// handshake), connected from a socket with a receive buffer of `rcvbuf` bytes when given.
async fn raw_ws(addr: SocketAddr, rcvbuf: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let tcp = tokio::time::timeout(TIMEOUT, socket.connect(addr))
        .await
        .expect("tcp connect timed out")
        .expect("tcp connect");
    let hs = ClientHandshake::new(
        &addr.to_string(),
        "/connection/websocket",
        &WsConfig::default(),
    );
    let ws = tokio::time::timeout(TIMEOUT, WsSocket::connect(tcp, &hs, WsConfig::default()))
        .await
        .expect("websocket handshake timed out")
        .expect("websocket handshake");
    ws.into_inner()
}

/// `n` masked pings; ping `i` carries `i` (8 bytes, big endian) followed by `pad` zero bytes.
fn pings(n: u64, pad: usize) -> BytesMut {
    let mut wire = BytesMut::new();
    for i in 0..n {
        let mut payload = i.to_be_bytes().to_vec();
        payload.resize(8 + pad, 0);
        encode_message(
            &Message::Ping(Bytes::from(payload)),
            Role::Client,
            &mut wire,
        );
    }
    wire
}

fn ping_index(payload: &[u8]) -> u64 {
    let mut index = [0u8; 8];
    index.copy_from_slice(&payload[..8]);
    u64::from_be_bytes(index)
}

/// Reads and decodes server frames until `stop` says so for one of them or the stream ends.
/// Returns every message read.
async fn read_until(
    tcp: &mut TcpStream,
    timeout: Duration,
    mut stop: impl FnMut(&Message) -> bool,
) -> Vec<Message> {
    let mut decoder = Decoder::new(Role::Client, &WsConfig::default());
    let mut messages = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => panic!(
                "nothing conclusive within {timeout:?}; last messages: {:?}",
                messages.iter().rev().take(3).collect::<Vec<_>>()
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return messages,
            Ok(Ok(n)) => n,
        };
        let before = messages.len();
        decoder
            .decode(&buf[..n], &mut messages)
            .expect("the server speaks WebSocket");
        if messages[before..].iter().any(&mut stop) {
            return messages;
        }
    }
}

#[tokio::test]
async fn ping_flood_before_connect_is_closed_with_1008() {
    let server = start(|_| {}).await;
    let mut tcp = raw_ws(server.addr(), None).await;
    // 100,000 pings without reading and without ever sending `connect`.
    let wire = pings(100_000, 0).freeze();
    let (mut rd, mut wr) = tcp.split();
    let write = async {
        // The server stops reading the pings once it closes: a failed write is fine.
        let _ = wr.write_all(&wire).await;
    };
    let read = async {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(TIMEOUT, rd.read_to_end(&mut buf)).await;
        buf
    };
    let ((), wire) = tokio::join!(write, read);
    let mut decoder = Decoder::new(Role::Client, &WsConfig::default());
    let mut messages = Vec::new();
    let _ = decoder.decode(&wire, &mut messages);
    let pongs = messages
        .iter()
        .filter(|m| matches!(m, Message::Pong(_)))
        .count();
    match messages.last() {
        Some(Message::Close(Some(frame))) => {
            assert_eq!(frame.code, 1008, "{frame:?}");
            assert_eq!(frame.reason, "too many control frames");
        }
        other => panic!("expected a close frame last, got {other:?} after {pongs} pongs"),
    }
    eprintln!("{pongs} pongs, then the close");
    assert!(pongs <= 100, "{pongs} pongs");
    drop(tcp);
    let gone = eventually(TIMEOUT, || async {
        server.hub().metrics().connections() == 0
    })
    .await;
    assert!(gone, "the flooding connection is still registered");
}

#[tokio::test]
async fn pings_without_reading_are_answered_by_the_latest_pong_only() {
    const PINGS: u64 = 100_000;
    // No rate limit: only the bound on queued pongs protects the server.
    let server = start(|c| c.websocket.max_control_frames_per_second = 0).await;
    // A small receive buffer that the test does not read while it sends.
    let mut tcp = raw_ws(server.addr(), Some(4096)).await;
    // 120-byte pings: answering each would queue 12 MB, more than the kernel buffers hold.
    tokio::time::timeout(Duration::from_secs(30), tcp.write_all(&pings(PINGS, 112)))
        .await
        .expect("the server keeps reading pings while its writes are stalled")
        .unwrap();
    let mut connect = BytesMut::new();
    encode_message(
        &Message::text(r#"{"id":1,"connect":{}}"#),
        Role::Client,
        &mut connect,
    );
    tcp.write_all(&connect).await.unwrap();
    let messages = read_until(&mut tcp, Duration::from_secs(30), |m| {
        matches!(m, Message::Text(_))
    })
    .await;
    let (reply, pongs) = messages.split_last().expect("messages");
    let reply = match reply {
        Message::Text(text) => String::from_utf8_lossy(text).into_owned(),
        other => panic!("expected the connect reply, got {other:?}"),
    };
    assert!(reply.contains(r#""connect""#), "{reply}");
    let pongs: Vec<u64> = pongs
        .iter()
        .map(|m| match m {
            Message::Pong(p) => ping_index(p),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    eprintln!("{} pongs for {PINGS} pings", pongs.len());
    assert!(
        pongs.len() < 60_000,
        "{} pongs for {PINGS} pings: not coalesced",
        pongs.len()
    );
    assert!(pongs.windows(2).all(|w| w[0] < w[1]), "pongs out of order");
    assert_eq!(
        pongs.last(),
        Some(&(PINGS - 1)),
        "the latest ping is answered"
    );
}

/// Reads until the peer closes; returns what it sent, or `None` if it was still open after
/// `timeout`.
async fn read_to_close(tcp: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_head_timeout() {
    let server = start(|c| c.http.head_timeout = Duration::from_secs(1)).await;
    let started = Instant::now();
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    let got = read_to_close(&mut tcp, Duration::from_secs(3))
        .await
        .expect("still open 3 s after connecting");
    let elapsed = started.elapsed();
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed too early: {elapsed:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_head_timeout() {
    let server = start(|c| c.http.head_timeout = Duration::from_secs(1)).await;
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_within(&mut tcp, TIMEOUT).await, Some(200));
    let answered = Instant::now();
    assert!(
        read_to_close(&mut tcp, Duration::from_secs(3))
            .await
            .is_some(),
        "idle keep-alive connection still open after {:?}",
        answered.elapsed()
    );
    assert!(answered.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn a_request_head_trickled_at_one_byte_per_second_is_closed() {
    let server = start(|c| c.http.head_timeout = Duration::from_secs(1)).await;
    let started = Instant::now();
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let trickle = tokio::spawn(async move {
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: yes\r\n\r\n" {
            if wr.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), rd.read_to_end(&mut got)).await;
    let elapsed = started.elapsed();
    trickle.abort();
    assert!(closed.is_ok(), "still open after {elapsed:?}");
    assert!(
        !String::from_utf8_lossy(&got).contains("200 OK"),
        "the trickled request was served"
    );
}

/// Sends `head` (and `body`), then reads the status line; `None` if nothing came within
/// `timeout`.
async fn status_within(tcp: &mut TcpStream, timeout: Duration) -> Option<u16> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + timeout;
    while !got.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => panic!("closed without an answer"),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&got);
    line.split(' ').nth(1).and_then(|s| s.parse().ok())
}

#[tokio::test]
async fn an_api_body_trickled_at_one_byte_per_second_gets_408() {
    // Development mode: the API answers loopback without a key.
    let server = start(|c| c.http.body_timeout = Duration::from_secs(1)).await;
    let started = Instant::now();
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    wr.write_all(b"POST /api/info HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if wr.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), rd.read_to_end(&mut got)).await;
    let elapsed = started.elapsed();
    trickle.abort();
    assert!(closed.is_ok(), "still open after {elapsed:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("not received in time"), "{text}");
}

#[tokio::test]
async fn a_wrong_key_gets_401_before_the_body_is_read() {
    let server = start(|c| c.api.key = "s3cret".into()).await;
    let addr = server.addr();
    for key_header in [
        "X-API-Key: wrong\r\n",
        "Authorization: apikey wrong\r\n",
        "",
    ] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        // Announces 4 MB, sends 10 bytes, and waits.
        let head = format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\n{key_header}Content-Length: {}\r\n\r\n",
            4 << 20
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(b"{\"channel\"").await.unwrap();
        let started = Instant::now();
        let status = status_within(&mut tcp, Duration::from_secs(2)).await;
        assert_eq!(status, Some(401), "with {key_header:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        // The unread body cannot be skipped: the server closes the connection.
        assert!(read_to_close(&mut tcp, TIMEOUT).await.is_some());
    }
    // The right key with the same unfinished body: the server waits for the body.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: s3cret\r\nContent-Length: {}\r\n\r\n",
        4 << 20
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(b"{\"channel\"").await.unwrap();
    assert_eq!(
        status_within(&mut tcp, Duration::from_millis(500)).await,
        None
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    let server = start(|c| c.api.key = "s3cret".into()).await;
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: s3cret\r\nContent-Length: {}\r\n\r\n",
        (4 << 20) + 1
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(status_within(&mut tcp, TIMEOUT).await, Some(413));
}

#[tokio::test]
async fn a_non_ascii_origin_is_refused_with_403() {
    // Development mode allows every origin, but not one that is not ASCII.
    let server = start(|_| {}).await;
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    let mut request = b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
        Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://"
        .to_vec();
    request.extend_from_slice(b"\xe9vil.example\r\n\r\n");
    tcp.write_all(&request).await.unwrap();
    assert_eq!(status_within(&mut tcp, TIMEOUT).await, Some(403));
    // The same request with an ASCII origin is upgraded.
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    let request = String::from_utf8_lossy(&request).replace('\u{fffd}', "e");
    tcp.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(status_within(&mut tcp, TIMEOUT).await, Some(101));
}

#[tokio::test]
async fn a_token_before_its_nbf_is_refused() {
    let server = start(|c| {
        c.client.allow_anonymous = false;
        c.client.token.hmac_secret_key = "k".into();
    })
    .await;
    let now = unix_now();
    let early = hs256("k", json!({"sub": "1", "nbf": now + 3600}));
    let mut conn = Conn::open(server.addr()).await;
    conn.send_text(json!({"id": 1, "connect": {"token": early}}).to_string())
        .await;
    assert_eq!(conn.expect_close(3500, TIMEOUT).await, "invalid token");
    let valid = hs256("k", json!({"sub": "1", "nbf": now - 10}));
    let mut conn = Conn::connected_with_token(server.addr(), &valid).await;
    conn.assert_alive().await;
}

#[tokio::test]
async fn shutdown_is_not_held_up_by_idle_or_silent_http_connections() {
    let server = start(|_| {}).await;
    let addr = server.addr();
    // One that never sends a byte, one idle after a keep-alive request.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_within(&mut idle, TIMEOUT).await, Some(200));
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("shutdown finished");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(read_to_close(&mut silent, TIMEOUT).await.is_some());
    assert!(read_to_close(&mut idle, TIMEOUT).await.is_some());
}
