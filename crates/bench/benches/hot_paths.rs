//! Criterion micro-benchmarks of the hot paths (issue 3, item 4):
//! - `encode_publication_push`: JSON encoding of one publication push (done once per
//!   publication, shared by every subscriber);
//! - `decode_commands`: decoding a client frame (single command and an SDK-style batch);
//! - `hub_fanout_1000`: one publication fanned out to 1,000 local subscribers of the hub
//!   (memory broker), including draining every subscriber's outbound queue.
//!
//! `cargo bench -p switchboard-bench --bench hot_paths`
//!
//! They live here rather than in proto/hub so that the load generator crate owns every
//! benchmark; they use only those crates' public APIs.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use switchboard_hub::{Client, Drained, Hub, HubConfig, MemoryBroker, TransportInfo};
use switchboard_proto::{ClientInfo, Publication, RawValue};

const DATA: &str = r#"{"s":12345,"t":987654321012,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;

fn encode(c: &mut Criterion) {
    let publication = Publication {
        data: RawValue::from_string(DATA.to_owned()).expect("valid JSON"),
        info: Some(ClientInfo {
            user: "42".into(),
            client: "b1c4e7a0-5c1e-4d1f-9a57-3f1a2b3c4d5e".into(),
            conn_info: None,
            chan_info: None,
        }),
        offset: 17,
        tags: Default::default(),
    };
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_publication_push", |b| {
        b.iter(|| {
            switchboard_proto::encode_publication_push(black_box("chat:room-1"), &publication)
        })
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let single = format!(r#"{{"id":3,"publish":{{"channel":"bench","data":{DATA}}}}}"#);
    let batch = [
        r#"{"id":1,"connect":{"token":"","name":"js"}}"#.to_owned(),
        r#"{"id":2,"subscribe":{"channel":"chat:room-1"}}"#.to_owned(),
        r#"{"id":3,"subscribe":{"channel":"chat:room-2","recover":true,"offset":10,"epoch":"abc"}}"#
            .to_owned(),
        single.clone(),
        "{}".to_owned(),
    ]
    .join("\n");
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_commands/publish", |b| {
        b.iter(|| switchboard_proto::decode_commands(black_box(single.as_bytes())))
    });
    g.throughput(Throughput::Elements(5));
    g.bench_function("decode_commands/batch5", |b| {
        b.iter(|| switchboard_proto::decode_commands(black_box(batch.as_bytes())))
    });
    g.finish();
}

/// Moves everything queued for `client` out (what the connection writer does).
fn drain(client: &Client, into: &mut Vec<Bytes>) -> usize {
    let mut cx = Context::from_waker(Waker::noop());
    let mut n = 0;
    loop {
        into.clear();
        match client.outbound().poll_drain(&mut cx, into, 1024, true) {
            Poll::Ready(Drained::Items) => n += into.len(),
            _ => return n,
        }
    }
}

fn fanout(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 1000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut config = HubConfig::default();
    config.client.allow_anonymous = true;
    config.channel.default.allow_subscribe_for_client = true;
    config.channel.default.allow_subscribe_for_anonymous = true;
    let hub = Hub::new(config, Arc::new(MemoryBroker::new()), "bench".into());
    let mut clients = Vec::with_capacity(SUBSCRIBERS);
    let mut buf = Vec::new();
    rt.block_on(async {
        for _ in 0..SUBSCRIBERS {
            let mut client = hub
                .accept(TransportInfo::new("bench", true))
                .expect("accepted");
            client
                .handle_frame(
                    b"{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"bench\"}}",
                    Instant::now(),
                )
                .await
                .expect("connect + subscribe");
            drain(&client, &mut buf);
            clients.push(client);
        }
    });
    assert_eq!(hub.subscriber_count("bench"), SUBSCRIBERS);
    let mut g = c.benchmark_group("hub");
    g.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    g.bench_function("fanout_1000/publish_and_drain", |b| {
        b.iter_batched(
            || RawValue::from_string(DATA.to_owned()).expect("valid JSON"),
            |data| {
                rt.block_on(hub.publish("bench", data, None))
                    .expect("published");
                let mut delivered = 0;
                for client in &clients {
                    delivered += drain(client, &mut buf);
                }
                assert_eq!(delivered, SUBSCRIBERS);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, encode, decode, fanout);
criterion_main!(benches);
