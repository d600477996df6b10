//! `WsSocket` over in-memory duplex pipes: messages, batches, automatic pong and close echo,
//! partial writes, protocol errors, the client handshake and idle memory.
#![cfg(feature = "tokio")]

use std::future::poll_fn;

use bytes::Bytes;
use switchboard_ws::{
    accept_key, ClientHandshake, CloseFrame, Message, ProtocolError, Role, WsConfig, WsError,
    WsSocket,
};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

fn pair(capacity: usize, config: WsConfig) -> (WsSocket<DuplexStream>, WsSocket<DuplexStream>) {
    let (a, b) = duplex(capacity);
    (
        WsSocket::new(a, Role::Server, config.clone()),
        WsSocket::new(b, Role::Client, config),
    )
}

#[tokio::test]
async fn text_binary_and_batches() {
    let (mut server, mut client) = pair(64 << 10, WsConfig::default());
    client.send(Message::text("hi")).await.unwrap();
    assert_eq!(server.recv().await.unwrap(), Some(Message::text("hi")));

    let parts = [
        Bytes::from_static(b"{\"a\":1}"),
        Bytes::from_static(b"{\"b\":2}"),
        Bytes::from_static(b"{}"),
    ];
    server.queue_text_batch(&parts, Some(b'\n'));
    server.queue_text_batch(&parts[..1], Some(b'\n'));
    server.queue_message(&Message::binary(vec![1u8, 2, 3]));
    assert!(server.has_pending_writes());
    server.flush().await.unwrap();
    assert!(!server.has_pending_writes());
    assert_eq!(
        client.recv().await.unwrap(),
        Some(Message::text("{\"a\":1}\n{\"b\":2}\n{}"))
    );
    assert_eq!(
        client.recv().await.unwrap(),
        Some(Message::text("{\"a\":1}"))
    );
    assert_eq!(
        client.recv().await.unwrap(),
        Some(Message::binary(vec![1u8, 2, 3]))
    );

    // The client role masks batches too.
    client.queue_text_batch(&parts, None);
    client.flush().await.unwrap();
    assert_eq!(
        server.recv().await.unwrap(),
        Some(Message::text("{\"a\":1}{\"b\":2}{}"))
    );
    assert!(server.is_idle());
    assert!(client.is_idle());
}

/// `poll_write_text_batch` writes at once when it can, queues the rest of a partial write,
/// and keeps frames in order behind anything already queued.
#[tokio::test]
async fn direct_batch_writes_through_a_small_pipe() {
    let (mut server, mut client) = pair(1024, WsConfig::default());
    let parts: Vec<Bytes> = (0..40)
        .map(|i| Bytes::from(format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(90))))
        .collect();
    let expected = parts
        .iter()
        .map(|p| String::from_utf8(p.to_vec()).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    // More than the pipe holds: part written, the rest queued.
    let first =
        poll_fn(|cx| std::task::Poll::Ready(server.poll_write_text_batch(cx, &parts, Some(b'\n'))))
            .await;
    assert!(first.is_pending());
    assert!(server.has_pending_writes());
    // A second batch while the first is queued goes behind it.
    let second = poll_fn(|cx| {
        std::task::Poll::Ready(server.poll_write_text_batch(cx, &parts[..2], Some(b'\n')))
    })
    .await;
    assert!(second.is_pending());
    let reader = tokio::spawn(async move {
        let a = client.recv().await.unwrap();
        let b = client.recv().await.unwrap();
        (client, a, b)
    });
    server.flush().await.unwrap();
    let (mut client, a, b) = reader.await.unwrap();
    assert_eq!(a, Some(Message::text(expected)));
    let two = format!(
        "{}\n{}",
        String::from_utf8(parts[0].to_vec()).unwrap(),
        String::from_utf8(parts[1].to_vec()).unwrap()
    );
    assert_eq!(b, Some(Message::text(two)));
    // Nothing queued and room in the pipe: written at once.
    let third =
        poll_fn(|cx| std::task::Poll::Ready(server.poll_write_text_batch(cx, &parts[..1], None)))
            .await;
    assert!(matches!(third, std::task::Poll::Ready(Ok(()))));
    assert!(!server.has_pending_writes());
    assert_eq!(
        client.recv().await.unwrap(),
        Some(Message::text(String::from_utf8(parts[0].to_vec()).unwrap()))
    );
}

#[tokio::test]
async fn poll_read_messages_batches() {
    let (mut server, mut client) = pair(64 << 10, WsConfig::default());
    for i in 0..10 {
        client.queue_message(&Message::text(format!("m{i}")));
    }
    client.flush().await.unwrap();
    let mut out = Vec::new();
    while out.len() < 10 {
        poll_fn(|cx| server.poll_read_messages(cx, &mut out))
            .await
            .unwrap();
    }
    let expected: Vec<Message> = (0..10).map(|i| Message::text(format!("m{i}"))).collect();
    assert_eq!(out, expected);
}

#[tokio::test]
async fn ping_is_answered_and_reported() {
    let (mut server, mut client) = pair(1024, WsConfig::default());
    client
        .send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    assert_eq!(
        server.recv().await.unwrap(),
        Some(Message::Ping(Bytes::from_static(b"are you there")))
    );
    assert!(server.has_pending_writes(), "pong queued");
    server.flush().await.unwrap();
    assert_eq!(
        client.recv().await.unwrap(),
        Some(Message::Pong(Bytes::from_static(b"are you there")))
    );
}

#[tokio::test]
async fn close_handshake() {
    let (mut server, mut client) = pair(1024, WsConfig::default());
    let client_task = tokio::spawn(async move {
        client.close(4001, "bye").await.unwrap();
        client
    });
    assert_eq!(
        server.recv().await.unwrap(),
        Some(Message::Close(Some(CloseFrame::new(4001, "bye"))))
    );
    assert!(server.is_close_received());
    assert!(server.is_close_sent(), "echo queued");
    server
        .close(1000, "ignored: echo already queued")
        .await
        .unwrap();
    assert!(matches!(server.recv().await, Ok(None)));
    let mut client = client_task.await.unwrap();
    // The client discarded the echo while draining; its read side is done.
    assert!(client.recv().await.is_ok());
}

#[tokio::test]
async fn close_echo_carries_the_code() {
    let (server_io, mut raw) = duplex(1024);
    let mut server = WsSocket::new(server_io, Role::Server, WsConfig::default());
    // A masked close frame with code 4000 and reason "x".
    let mut frame = vec![0x88, 0x83, 0, 0, 0, 0];
    frame.extend_from_slice(&[0x0f, 0xa0, b'x']);
    raw.write_all(&frame).await.unwrap();
    raw.write_all(&[0x81, 0x80, 0, 0, 0, 0]).await.unwrap(); // ignored after close
    assert_eq!(
        server.recv().await.unwrap(),
        Some(Message::Close(Some(CloseFrame::new(4000, "x"))))
    );
    assert!(matches!(server.recv().await, Ok(None)));
    server.flush().await.unwrap();
    let mut buf = [0u8; 4];
    raw.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, [0x88, 0x02, 0x0f, 0xa0]);
}

#[tokio::test]
async fn large_messages_through_a_small_pipe() {
    let config = WsConfig::default().max_message_size(4 << 20);
    let (mut server, mut client) = pair(1000, config);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let big = Bytes::from(big);
    let msg = Message::Binary(big.clone());
    let m2 = msg.clone();
    let sender = tokio::spawn(async move {
        client.send(m2).await.unwrap();
        let echoed = client.recv().await.unwrap();
        (client, echoed)
    });
    let got = server.recv().await.unwrap().unwrap();
    assert_eq!(got, msg);
    assert!(server.is_idle(), "no buffers kept after the message");
    server.send(got).await.unwrap();
    let (client, echoed) = sender.await.unwrap();
    assert_eq!(echoed, Some(msg));
    assert!(server.is_idle());
    assert!(client.is_idle());
}

#[tokio::test]
async fn protocol_error_queues_close_with_code() {
    let (server_io, mut raw) = duplex(1024);
    let mut server = WsSocket::new(server_io, Role::Server, WsConfig::default());
    // A valid masked "ok", then an unmasked frame.
    raw.write_all(&[0x81, 0x82, 0, 0, 0, 0, b'o', b'k', 0x81, 0x00])
        .await
        .unwrap();
    // The message before the error comes first...
    assert_eq!(server.recv().await.unwrap(), Some(Message::text("ok")));
    server.queue_message(&Message::text("reply"));
    // ...then the error.
    match server.recv().await {
        Err(WsError::Protocol(ProtocolError::UnmaskedFrame)) => {}
        other => panic!("unexpected {other:?}"),
    }
    raw.shutdown().await.unwrap();
    server.close(1000, "").await.unwrap();
    let mut wire = Vec::new();
    raw.read_to_end(&mut wire).await.unwrap();
    let mut expected = vec![0x81, 0x05];
    expected.extend_from_slice(b"reply");
    expected.extend_from_slice(&[0x88, 0x02, 0x03, 0xea]);
    assert_eq!(wire, expected);
}

#[tokio::test]
async fn eof_without_close() {
    let (server_io, raw) = duplex(1024);
    let mut server = WsSocket::new(server_io, Role::Server, WsConfig::default());
    drop(raw);
    assert!(matches!(server.recv().await, Err(WsError::UnexpectedEof)));
}

#[tokio::test]
async fn client_handshake_and_early_frames() {
    let (client_io, mut server_io) = duplex(4096);
    let server = tokio::spawn(async move {
        let mut req = Vec::new();
        let mut byte = [0u8; 1];
        while !req.ends_with(b"\r\n\r\n") {
            server_io.read_exact(&mut byte).await.unwrap();
            req.push(byte[0]);
        }
        let req = String::from_utf8(req).unwrap();
        assert!(req.starts_with("GET /connection/websocket HTTP/1.1\r\n"));
        assert!(req.contains("Origin: http://localhost\r\n"));
        let key = req
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        let mut resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(key.as_bytes())
        )
        .into_bytes();
        // A frame in the same write as the response.
        resp.extend_from_slice(&[0x81, 0x05]);
        resp.extend_from_slice(b"hello");
        server_io.write_all(&resp).await.unwrap();
        let mut ws = WsSocket::new(server_io, Role::Server, WsConfig::default());
        ws.recv().await.unwrap()
    });
    let hs = ClientHandshake::new("localhost", "/connection/websocket", &WsConfig::default())
        .header("Origin", "http://localhost");
    let mut client = WsSocket::connect(client_io, &hs, WsConfig::default())
        .await
        .unwrap();
    assert_eq!(client.recv().await.unwrap(), Some(Message::text("hello")));
    client.send(Message::text("back")).await.unwrap();
    assert_eq!(server.await.unwrap(), Some(Message::text("back")));
}

#[tokio::test]
async fn compression_roundtrip() {
    let params = switchboard_ws::DeflateParams {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        ..Default::default()
    };
    let config = WsConfig::default().compression(true);
    let (a, b) = duplex(1 << 16);
    let mut server = WsSocket::with_deflate(a, Role::Server, config.clone(), Some(params));
    let mut client = WsSocket::with_deflate(b, Role::Client, config, Some(params));
    let line =
        Bytes::from_static(b"{\"push\":{\"channel\":\"news\",\"pub\":{\"data\":{\"x\":1}}}}");
    let parts = vec![line.clone(); 20];
    server.queue_text_batch(&parts, Some(b'\n'));
    server.flush().await.unwrap();
    let expected = vec![&line[..]; 20].join(&b'\n');
    assert_eq!(
        client.recv().await.unwrap(),
        Some(Message::Text(Bytes::from(expected.clone())))
    );
    client
        .send(Message::Text(expected.clone().into()))
        .await
        .unwrap();
    assert_eq!(
        server.recv().await.unwrap(),
        Some(Message::Text(expected.into()))
    );
    assert!(server.is_idle() && client.is_idle());

    // Compress once, queue the shared result.
    let shared = switchboard_ws::compress_payload(&[&line[..], &line[..]], Some(b'\n'), 15)
        .expect("compressible");
    assert_eq!(server.compression_window(), Some(15));
    assert!(server.queue_compressed_text(&Bytes::from(shared)));
    server.flush().await.unwrap();
    let two = [&line[..], &line[..]].join(&b'\n');
    assert_eq!(
        client.recv().await.unwrap(),
        Some(Message::Text(Bytes::from(two)))
    );
    let (plain, _x) = pair(1024, WsConfig::default());
    let mut plain = plain;
    assert!(!plain.queue_compressed_text(&Bytes::from_static(b"x")));
    assert!(!plain.has_pending_writes());
}

#[test]
fn socket_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    fn check_send<T: Send>(_: &T) {}
    check::<WsSocket<tokio::net::TcpStream>>();
    check::<WsSocket<DuplexStream>>();
    check::<WsError>();
    let (a, _b) = duplex(16);
    let mut s = WsSocket::new(a, Role::Server, WsConfig::default());
    check_send(&s.recv());
    check_send(&s.flush());
    check_send(&s.close(1000, ""));
    let (c, _d) = duplex(16);
    let hs = ClientHandshake::new("h", "/", &WsConfig::default());
    check_send(&WsSocket::connect(c, &hs, WsConfig::default()));
}

#[test]
fn idle_socket_is_small() {
    let size = std::mem::size_of::<WsSocket<tokio::net::TcpStream>>();
    let io = std::mem::size_of::<tokio::net::TcpStream>();
    assert!(size - io <= 256, "WsSocket overhead {} bytes", size - io);
}
