//! Control frame floods (issue 11): a peer that sends pings and never reads makes the socket
//! hold a bounded number of pongs (the most recent ping is still answered), and a peer that
//! sends more control frames per second than the limit is closed with 1008.
#![cfg(feature = "tokio")]

use std::future::poll_fn;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use switchboard_ws::{
    encode_message, Decoder, Message, ProtocolError, Role, WsConfig, WsError, WsSocket,
    MAX_QUEUED_PONGS,
};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

/// `n` masked pings whose payloads are their index (8 bytes, big endian).
fn pings(n: u64) -> BytesMut {
    let mut wire = BytesMut::new();
    for i in 0..n {
        let ping = Message::Ping(Bytes::copy_from_slice(&i.to_be_bytes()));
        encode_message(&ping, Role::Client, &mut wire);
    }
    wire
}

/// Every message the server sent, decoded as a client, from what `raw` can still read.
async fn read_all(raw: &mut DuplexStream) -> Vec<Message> {
    let mut wire = Vec::new();
    raw.read_to_end(&mut wire).await.unwrap();
    let mut decoder = Decoder::new(Role::Client, &WsConfig::default());
    let mut out = Vec::new();
    decoder.decode(&wire, &mut out).unwrap();
    out
}

/// Drives the server socket the way the server's connection task does (flush what it can,
/// read what arrives) until the read side fails or ends; returns that error and the largest
/// number of queued bytes seen.
async fn drive(server: &mut WsSocket<DuplexStream>) -> (WsError, usize) {
    let mut most = 0;
    let mut batch = Vec::new();
    loop {
        let read = poll_fn(|cx| {
            if server.has_pending_writes() {
                if let Poll::Ready(Err(e)) = server.poll_flush(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            server.poll_read_messages(cx, &mut batch)
        })
        .await;
        most = most.max(server.pending_write_bytes());
        batch.clear();
        if let Err(e) = read {
            return (e, most);
        }
    }
}

#[tokio::test]
async fn pings_without_reading_keep_the_queue_bounded() {
    const PINGS: u64 = 100_000;
    // No rate limit: only the coalescing bounds the queue.
    let config = WsConfig::default().max_control_frames_per_second(None);
    // A small pipe the client never reads: the server's writes stall at once.
    let (server_io, mut raw) = duplex(4096);
    let mut server = WsSocket::new(server_io, Role::Server, config);
    let wire = pings(PINGS);
    let writer = tokio::spawn(async move {
        raw.write_all(&wire).await.unwrap();
        raw.shutdown().await.unwrap();
        raw
    });
    let (ended, most) = drive(&mut server).await;
    assert!(matches!(ended, WsError::UnexpectedEof), "{ended:?}");
    let mut raw = writer.await.unwrap();
    // At most 16 pongs of 10 bytes, and one more behind a stalled write's rest.
    assert!(
        most <= (MAX_QUEUED_PONGS + 1) * 10,
        "{most} bytes queued for {PINGS} pings"
    );
    let drain = tokio::spawn(async move { read_all(&mut raw).await });
    server.flush().await.unwrap();
    drop(server);
    let pongs: Vec<u64> = drain
        .await
        .unwrap()
        .into_iter()
        .map(|m| match m {
            Message::Pong(p) => u64::from_be_bytes(p[..].try_into().unwrap()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert!(
        pongs.len() < 1_000,
        "{} pongs for {PINGS} pings: not coalesced",
        pongs.len()
    );
    assert!(pongs.windows(2).all(|w| w[0] < w[1]), "pongs in order");
    assert_eq!(
        pongs.last(),
        Some(&(PINGS - 1)),
        "the last ping is answered"
    );
}

#[tokio::test]
async fn a_few_pings_each_get_their_pong() {
    let (server_io, mut raw) = duplex(1 << 16);
    let mut server = WsSocket::new(server_io, Role::Server, WsConfig::default());
    raw.write_all(&pings(10)).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 10 {
        poll_fn(|cx| server.poll_read_messages(cx, &mut got))
            .await
            .unwrap();
    }
    server.flush().await.unwrap();
    drop(server);
    let pongs: Vec<Message> = read_all(&mut raw).await;
    let expected: Vec<Message> = (0..10u64)
        .map(|i| Message::Pong(Bytes::copy_from_slice(&i.to_be_bytes())))
        .collect();
    assert_eq!(pongs, expected);
}

#[tokio::test]
async fn a_control_frame_flood_is_closed_with_1008() {
    let config = WsConfig::default().max_control_frames_per_second(Some(50));
    let (server_io, mut raw) = duplex(1 << 20);
    let mut server = WsSocket::new(server_io, Role::Server, config);
    // A text message first: delivered before the error.
    let mut wire = BytesMut::new();
    encode_message(&Message::text("hi"), Role::Client, &mut wire);
    wire.extend_from_slice(&pings(1_000));
    raw.write_all(&wire).await.unwrap();
    let mut got = Vec::new();
    let err = loop {
        match poll_fn(|cx| server.poll_read_messages(cx, &mut got)).await {
            Ok(()) => {}
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            err,
            WsError::Protocol(ProtocolError::TooManyControlFrames { limit: 50 })
        ),
        "{err:?}"
    );
    assert_eq!(got[0], Message::text("hi"));
    // The pings under the limit were delivered, none beyond it.
    assert_eq!(got.len(), 1 + 50);
    assert!(server.is_close_sent());
    raw.shutdown().await.unwrap();
    server.close(1000, "").await.unwrap();
    drop(server);
    let sent = read_all(&mut raw).await;
    let close = sent.last().expect("a close frame");
    match close {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, 1008);
            assert_eq!(frame.reason, "too many control frames");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    let pongs = sent
        .iter()
        .filter(|m| matches!(m, Message::Pong(_)))
        .count();
    assert!(pongs <= 50, "{pongs} pongs");
}

#[tokio::test]
async fn pings_under_the_limit_in_separate_seconds_are_fine() {
    let config = WsConfig::default().max_control_frames_per_second(Some(5));
    let (server_io, mut raw) = duplex(1 << 16);
    let mut server = WsSocket::new(server_io, Role::Server, config);
    for round in 0..2u64 {
        raw.write_all(&pings(5)).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 5 {
            poll_fn(|cx| server.poll_read_messages(cx, &mut got))
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        server.flush().await.unwrap();
        if round == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1_050)).await;
        }
    }
    drop(server);
    let pongs = read_all(&mut raw).await;
    assert_eq!(pongs.len(), 10);
}

#[tokio::test]
async fn the_latest_ping_is_answered_before_our_close() {
    let config = WsConfig::default().max_control_frames_per_second(None);
    let (server_io, mut raw) = duplex(64);
    let mut server = WsSocket::new(server_io, Role::Server, config);
    let n = MAX_QUEUED_PONGS as u64 + 10;
    let wire = pings(n);
    let writer = tokio::spawn(async move {
        raw.write_all(&wire).await.unwrap();
        raw
    });
    let mut got = Vec::new();
    while got.len() < n as usize {
        poll_fn(|cx| server.poll_read_messages(cx, &mut got))
            .await
            .unwrap();
    }
    let mut raw = writer.await.unwrap();
    // Nothing was flushed yet: 15 pongs queued, then the pong for the latest ping, which
    // replaced the pongs of the pings after the 15th one by one.
    server.queue_close(1000, "bye");
    let reader = tokio::spawn(async move { read_all(&mut raw).await });
    server.close(1000, "").await.unwrap();
    drop(server);
    let sent = reader.await.unwrap();
    let mut expected: Vec<Message> = (0..MAX_QUEUED_PONGS as u64 - 1)
        .chain([n - 1])
        .map(|i| Message::Pong(Bytes::copy_from_slice(&i.to_be_bytes())))
        .collect();
    expected.push(Message::Close(Some(switchboard_ws::CloseFrame::new(
        1000, "bye",
    ))));
    assert_eq!(sent, expected);
}
