//! Three real nodes behaving as one: each test starts three `switchboard` processes (the real
//! binary, one config file each, loopback ports) sharing the local Redis (127.0.0.1:6379) or the
//! local NATS with JetStream (127.0.0.1:4222), under a key/subject prefix unique to the test run.
//! Clients are raw WebSocket connections and the HTTP server API.
//!
//! Nodes are called A, B and C (indexes 0, 1, 2). When a test ends (or fails) its nodes are
//! SIGKILLed and the prefix's data is deleted: Redis keys by SCAN + DEL (never FLUSH), NATS
//! JetStream stream and buckets through `NatsBroker::delete_storage`. A failing test prints the
//! tail of every node's log.
//!
//! `scripts/test cluster` starts Redis and NATS when they are not running.

mod support;

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use support::{api, eventually, hs256, Conn, EmuStream, EmuTarget, Event, TIMEOUT};

const KEY: &str = "cluster-api-key";
const SECRET: &str = "cluster-connection-secret";
const REDIS: &str = "127.0.0.1:6379";
const NATS: &str = "127.0.0.1:4222";
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
/// How long a node may take from spawn to listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of each node's output kept for failure messages.
const LOG_LINES: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BrokerKind {
    Redis,
    Nats,
}

/// A prefix no other run uses: letters, digits and `-` (valid for Redis and NATS).
fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("sbcluster-{test}-{}-{nanos}", std::process::id())
}

/// The configuration of one node. `client_extra` is TOML placed in `[client]`, `extra` TOML
/// placed at the end (sections of its own).
fn node_toml(
    name: &str,
    broker: BrokerKind,
    redis: &str,
    prefix: &str,
    client_extra: &str,
    extra: &str,
) -> String {
    let broker = match broker {
        BrokerKind::Redis => format!(
            "[broker]\ntype = \"redis\"\n[broker.redis]\naddresses = [\"redis://{redis}\"]\n\
             prefix = \"{prefix}\"\n"
        ),
        BrokerKind::Nats => format!(
            "[broker]\ntype = \"nats\"\n[broker.nats]\nurl = \"nats://{NATS}\"\n\
             prefix = \"{prefix}\"\n"
        ),
    };
    format!(
        r#"
node_name = "{name}"
address = "127.0.0.1:0"

[log]
level = "info"
format = "json"

[api]
key = "{KEY}"

[client]
# No pings: they would interleave with the replies and pushes the tests read.
ping_interval = "0s"
{client_extra}

[client.token]
hmac_secret_key = "{SECRET}"

[shutdown]
drain_timeout = "2s"

{broker}

# Ordered delivery: history gives every publication an offset to check.
[[channel.namespaces]]
name = "feed"
allow_subscribe_for_client = true
history_size = 1000
history_ttl = "300s"

# Presence with join/leave pushes to every subscriber.
[[channel.namespaces]]
name = "room"
allow_subscribe_for_client = true
presence = true
force_push_join_leave = true

# Recovery.
[[channel.namespaces]]
name = "rec"
allow_subscribe_for_client = true
history_size = 100
history_ttl = "300s"
force_recovery = true

# Clients may not subscribe by themselves: only the server API subscribes them.
[[channel.namespaces]]
name = "news"

{extra}
"#
    )
}

/// One `switchboard` process.
struct Node {
    name: String,
    addr: SocketAddr,
    child: Option<Child>,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Node {
    /// Spawns the binary with `config` and waits until it listens.
    async fn start(name: &str, config: PathBuf) -> Node {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .current_dir(config.parent().unwrap())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG");
        for (var, _) in std::env::vars() {
            if var.starts_with("SWITCHBOARD_") {
                command.env_remove(var);
            }
        }
        let mut child = command.spawn().expect("spawn the switchboard binary");
        let log: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<SocketAddr>();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let out_log = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.is_some() {
                    if let Some(addr) = listening_addr(&line) {
                        let _ = tx.take().unwrap().send(addr);
                    }
                }
                keep(&out_log, line);
            }
        });
        let err_log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                keep(&err_log, format!("stderr: {line}"));
            }
        });
        let addr = match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(addr)) => addr,
            other => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "node {name} did not start ({other:?}, {status:?}):\n{}",
                    log.lock()
                        .unwrap()
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            }
        };
        Node {
            name: name.to_string(),
            addr,
            child: Some(child),
            log,
        }
    }

    /// SIGKILL, and reap the process.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (graceful shutdown); the returned task ends when the process exited, with its
    /// status and the time since the signal.
    fn terminate(
        &mut self,
    ) -> tokio::task::JoinHandle<(std::io::Result<std::process::ExitStatus>, Duration)> {
        let mut child = self.child.take().expect("node is running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let sent = Instant::now();
        tokio::task::spawn_blocking(move || (child.wait(), sent.elapsed()))
    }

    fn log_tail(&self) -> String {
        self.log
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn keep(log: &Mutex<VecDeque<String>>, line: String) {
    let mut log = log.lock().unwrap();
    if log.len() == LOG_LINES {
        log.pop_front();
    }
    log.push_back(line);
}

/// The address in the JSON log line `switchboard listening`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let v: Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    if fields.get("message")?.as_str()? != "switchboard listening" {
        return None;
    }
    fields.get("addr")?.as_str()?.parse().ok()
}

/// Three nodes on one broker prefix.
struct Cluster {
    broker: BrokerKind,
    prefix: String,
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts nodes `a`, `b` and `c` with `client_extra` in their `[client]` section; waits
    /// until every node lists all three in `info` (so control messages flow between all of them).
    async fn start(test: &str, broker: BrokerKind, client_extra: &str) -> Cluster {
        require_service(broker);
        Self::start_on(test, broker, REDIS, client_extra).await
    }

    /// Like [`Cluster::start`], with Redis at `redis` (`host:port`).
    async fn start_on(test: &str, broker: BrokerKind, redis: &str, client_extra: &str) -> Cluster {
        Self::start_full(test, broker, redis, client_extra, "").await
    }

    /// Like [`Cluster::start_on`], with `extra` TOML sections in every node's configuration.
    async fn start_full(
        test: &str,
        broker: BrokerKind,
        redis: &str,
        client_extra: &str,
        extra: &str,
    ) -> Cluster {
        let prefix = unique_prefix(test);
        let dir = tempfile::tempdir().unwrap();
        let mut starting = Vec::new();
        for name in ["a", "b", "c"] {
            let path = dir.path().join(format!("{name}.toml"));
            std::fs::write(
                &path,
                node_toml(name, broker, redis, &prefix, client_extra, extra),
            )
            .unwrap();
            starting.push(Node::start(name, path));
        }
        let nodes = futures_util::future::join_all(starting).await;
        let cluster = Cluster {
            broker,
            prefix,
            nodes,
            _dir: dir,
        };
        let started = Instant::now();
        cluster
            .wait_for_nodes(&[A, B, C], Duration::from_secs(10))
            .await;
        eprintln!(
            "[{test}] three {broker:?} nodes see each other in info after {:?}",
            started.elapsed()
        );
        cluster
    }

    fn addr(&self, node: usize) -> SocketAddr {
        self.nodes[node].addr
    }

    /// Names of the nodes `node`'s `info` lists.
    async fn info_names(&self, node: usize) -> BTreeSet<String> {
        let reply = api(self.addr(node), KEY, "info", json!({})).await;
        let nodes = reply["result"]["nodes"]
            .as_array()
            .unwrap_or_else(|| panic!("info failed: {reply}"));
        let names: BTreeSet<String> = nodes
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names.len(), nodes.len(), "duplicate nodes in {reply}");
        names
    }

    /// Waits until every node in `nodes` lists exactly `nodes` in `info`.
    async fn wait_for_nodes(&self, nodes: &[usize], within: Duration) {
        let want: BTreeSet<String> = nodes.iter().map(|&i| self.nodes[i].name.clone()).collect();
        for &i in nodes {
            let ok = eventually(within, || async { self.info_names(i).await == want }).await;
            assert!(
                ok,
                "node {} lists {:?} in info, expected {want:?}",
                self.nodes[i].name,
                self.info_names(i).await
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!(
                    "---- node {} ({}) log tail ----\n{}",
                    node.name,
                    node.addr,
                    node.log_tail()
                );
            }
        }
        for node in &mut self.nodes {
            node.kill();
        }
        match self.broker {
            BrokerKind::Redis => match redis_delete_prefix(&self.prefix) {
                Ok(n) => eprintln!("deleted {n} Redis keys of {}", self.prefix),
                Err(e) => eprintln!("cleaning Redis keys of {} failed: {e}", self.prefix),
            },
            BrokerKind::Nats => {
                let prefix = self.prefix.clone();
                // A runtime of its own: Drop may run inside the test's runtime.
                let done = std::thread::spawn(move || nats_delete_storage(&prefix)).join();
                match done {
                    Ok(Ok(())) => eprintln!("deleted NATS storage of {}", self.prefix),
                    Ok(Err(e)) => eprintln!("cleaning NATS storage of {} failed: {e}", self.prefix),
                    Err(_) => eprintln!("cleaning NATS storage of {} panicked", self.prefix),
                }
            }
        }
    }
}

/// Fails the test with a clear message when the broker's server is not running.
fn require_service(broker: BrokerKind) {
    let (what, addr) = match broker {
        BrokerKind::Redis => ("Redis", REDIS),
        BrokerKind::Nats => ("NATS (with JetStream)", NATS),
    };
    let addr: SocketAddr = addr.parse().unwrap();
    if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        panic!("the cluster tests need {what} on {addr}; `scripts/test cluster` starts it");
    }
}

// ---- Redis cleanup: a minimal RESP client (the server crate does not depend on `redis`) ----

#[derive(Debug)]
#[allow(dead_code)] // error texts are read through Debug
enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

fn resp_command(stream: &mut TcpStream, args: &[&[u8]]) -> std::io::Result<Resp> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    stream.write_all(&out)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let reply = resp_read(&mut reader)?;
    assert!(reader.buffer().is_empty(), "one reply per command");
    Ok(reply)
}

fn resp_read(reader: &mut impl BufRead) -> std::io::Result<Resp> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at_checked(1).ok_or_else(|| bad("empty reply"))?;
    let number = || rest.parse::<i64>().map_err(|_| bad("bad length"));
    Ok(match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Int(number()?),
        "$" => match number()? {
            n if n < 0 => Resp::Bulk(None),
            n => {
                let mut data = vec![0; n as usize + 2];
                reader.read_exact(&mut data)?;
                data.truncate(n as usize);
                Resp::Bulk(Some(data))
            }
        },
        "*" => match number()? {
            n if n < 0 => Resp::Array(None),
            n => Resp::Array(Some(
                (0..n)
                    .map(|_| resp_read(reader))
                    .collect::<Result<_, _>>()?,
            )),
        },
        _ => return Err(bad("unknown reply type")),
    })
}

/// Deletes every key under `prefix.` with SCAN + DEL; returns how many.
fn redis_delete_prefix(prefix: &str) -> std::io::Result<usize> {
    let mut stream = TcpStream::connect(REDIS)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let pattern = format!("{prefix}.*");
    let mut cursor = b"0".to_vec();
    let mut deleted = 0;
    loop {
        let reply = resp_command(
            &mut stream,
            &[
                b"SCAN",
                &cursor,
                b"MATCH",
                pattern.as_bytes(),
                b"COUNT",
                b"1000",
            ],
        )?;
        let Resp::Array(Some(mut parts)) = reply else {
            return Err(std::io::Error::other(format!("SCAN: {reply:?}")));
        };
        let (Resp::Array(Some(keys)), Resp::Bulk(Some(next))) = (parts.remove(1), parts.remove(0))
        else {
            return Err(std::io::Error::other("SCAN: unexpected reply"));
        };
        let keys: Vec<Vec<u8>> = keys
            .into_iter()
            .filter_map(|k| match k {
                Resp::Bulk(Some(k)) => Some(k),
                _ => None,
            })
            .collect();
        if !keys.is_empty() {
            let mut args: Vec<&[u8]> = vec![b"DEL"];
            args.extend(keys.iter().map(Vec::as_slice));
            match resp_command(&mut stream, &args)? {
                Resp::Int(n) => deleted += n as usize,
                other => return Err(std::io::Error::other(format!("DEL: {other:?}"))),
            }
        }
        if next == b"0" {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// Keys under `prefix.` (for checks).
fn redis_keys(prefix: &str) -> Vec<String> {
    let mut stream = TcpStream::connect(REDIS).expect("connect to Redis");
    let pattern = format!("{prefix}.*");
    match resp_command(&mut stream, &[b"KEYS", pattern.as_bytes()]).expect("KEYS") {
        Resp::Array(Some(keys)) => keys
            .into_iter()
            .filter_map(|k| match k {
                Resp::Bulk(Some(k)) => Some(String::from_utf8_lossy(&k).into_owned()),
                _ => None,
            })
            .collect(),
        other => panic!("KEYS: {other:?}"),
    }
}

/// Deletes the JetStream stream and key-value buckets of `prefix`.
fn nats_delete_storage(prefix: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut config = switchboard_broker_nats::NatsConfig::default();
        config.url = format!("nats://{NATS}");
        config.prefix = prefix.to_string();
        let broker = switchboard_broker_nats::NatsBroker::connect(config, "cluster-test-cleanup")
            .await
            .map_err(|e| e.to_string())?;
        broker
            .ready(Duration::from_secs(5))
            .await
            .map_err(|e| format!("{e:?}"))?;
        broker.delete_storage().await.map_err(|e| format!("{e:?}"))
    })
}

// ---- client helpers ----

fn token(user: &str) -> String {
    hs256(SECRET, json!({ "sub": user }))
}

async fn user_conn(addr: SocketAddr, user: &str) -> Conn {
    Conn::connected_with_token(addr, &token(user)).await
}

fn result(reply: &Value) -> &Value {
    reply
        .get("result")
        .unwrap_or_else(|| panic!("expected a result, got {reply}"))
}

/// `POST /api/publish` on `addr`; returns the result (`offset`, `epoch` with history).
async fn publish(addr: SocketAddr, channel: &str, data: Value) -> Value {
    let reply = api(
        addr,
        KEY,
        "publish",
        json!({"channel": channel, "data": data}),
    )
    .await;
    result(&reply).clone()
}

/// `POST /api/presence` on `addr`: client id -> info.
async fn presence(addr: SocketAddr, channel: &str) -> Map<String, Value> {
    let reply = api(addr, KEY, "presence", json!({ "channel": channel })).await;
    result(&reply)["presence"]
        .as_object()
        .unwrap_or_else(|| panic!("presence without entries: {reply}"))
        .clone()
}

/// Users in `presence` on `addr`, sorted.
async fn presence_users(addr: SocketAddr, channel: &str) -> Vec<String> {
    let mut users: Vec<String> = presence(addr, channel)
        .await
        .values()
        .map(|info| info["user"].as_str().unwrap_or_default().to_string())
        .collect();
    users.sort();
    users
}

/// Reads until a push matching `pred` arrives (other messages are skipped); fails after
/// `within`.
async fn next_push(
    conn: &mut Conn,
    what: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.next_event(left).await {
            Event::Json(v) if v.get("push").is_some_and(&pred) => return v["push"].clone(),
            Event::Json(_) => {}
            other => panic!("waiting for {what}: {other:?}"),
        }
    }
}

fn is_join_of(push: &Value, user: &str) -> bool {
    push["join"]["info"]["user"] == user
}

fn is_leave_of(push: &Value, user: &str) -> bool {
    push["leave"]["info"]["user"] == user
}

/// Sends a close frame and drops the connection.
async fn close(mut conn: Conn) {
    let _ = tokio::time::timeout(TIMEOUT, conn.ws.close(None)).await;
}

/// The tests. Their names start with `three_nodes::`, which `scripts/test` uses to run them in
/// the `cluster` suite rather than in `test`.
mod three_nodes {
    use super::*;

    /// Subscribes on A (and C), publishes 200 times through B's API, and checks that both
    /// subscribers get all 200 in publication order with consecutive offsets.
    async fn ordered_delivery(test: &str, broker: BrokerKind) {
        const N: u64 = 200;
        let cluster = Cluster::start(test, broker, "").await;
        let channel = "feed:ticks";
        let mut on_a = user_conn(cluster.addr(A), "reader-a").await;
        let mut on_c = user_conn(cluster.addr(C), "reader-c").await;
        // No sleep after subscribing: once the reply is in, publications from any node must arrive.
        on_a.subscribe(channel).await;
        on_c.subscribe(channel).await;

        let started = Instant::now();
        let mut epoch = String::new();
        for n in 0..N {
            let r = publish(cluster.addr(B), channel, json!({ "n": n })).await;
            assert_eq!(r["offset"], n + 1, "publish {n} through B: {r}");
            if n == 0 {
                epoch = r["epoch"].as_str().unwrap().to_string();
            }
            assert_eq!(r["epoch"], epoch.as_str());
        }
        let published = started.elapsed();
        for (node, conn) in [("A", &mut on_a), ("C", &mut on_c)] {
            for n in 0..N {
                let (got_channel, publication) = conn.next_publication().await;
                assert_eq!(got_channel, channel, "on {node}");
                assert_eq!(
                    publication["data"],
                    json!({ "n": n }),
                    "publication {n} on node {node}: {publication}"
                );
                assert_eq!(publication["offset"], n + 1, "on {node}: {publication}");
            }
        }
        on_a.expect_silence(Duration::from_millis(300)).await;
        eprintln!(
        "[{test}] {N} publications through B: published in {published:?}, all received on A and C \
         after {:?}",
        started.elapsed()
    );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_publications_through_b_reach_a_in_order() {
        ordered_delivery("order", BrokerKind::Redis).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats_publications_through_b_reach_a_in_order() {
        ordered_delivery("nats-order", BrokerKind::Nats).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn presence_and_join_leave_across_nodes() {
        presence_across_nodes("presence", BrokerKind::Redis).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats_presence_and_join_leave_across_nodes() {
        presence_across_nodes("nats-presence", BrokerKind::Nats).await;
    }

    /// alice on A and bob on C in a presence channel: B's API lists both, join and leave pushes
    /// cross nodes both ways, a closed connection leaves presence at once.
    async fn presence_across_nodes(test: &str, broker: BrokerKind) {
        let cluster = Cluster::start(test, broker, "").await;
        let channel = "room:lobby";
        let within = Duration::from_secs(5);
        let mut alice = user_conn(cluster.addr(A), "alice").await;
        alice.subscribe(channel).await;
        let mut bob = user_conn(cluster.addr(C), "bob").await;
        bob.subscribe(channel).await;

        // C -> A: alice sees bob join.
        let push = next_push(&mut alice, "bob's join on A", within, |p| {
            is_join_of(p, "bob")
        })
        .await;
        assert_eq!(push["channel"], channel);
        assert_eq!(push["join"]["info"]["client"], bob.client_id.as_str());

        // B, which has no client in the channel, sees both in presence.
        let entries = presence(cluster.addr(B), channel).await;
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert_eq!(entries[&alice.client_id]["user"], "alice", "{entries:?}");
        assert_eq!(
            entries[&alice.client_id]["client"],
            alice.client_id.as_str()
        );
        assert_eq!(entries[&bob.client_id]["user"], "bob", "{entries:?}");
        let stats = api(
            cluster.addr(B),
            KEY,
            "presence_stats",
            json!({"channel": channel}),
        )
        .await;
        assert_eq!(
            result(&stats),
            &json!({"num_clients": 2, "num_users": 2}),
            "{stats}"
        );

        // A -> C: bob sees alice leave, then join again.
        alice
            .request_ok(json!({"unsubscribe": {"channel": channel}}))
            .await;
        let push = next_push(&mut bob, "alice's leave on C", within, |p| {
            is_leave_of(p, "alice")
        })
        .await;
        assert_eq!(push["leave"]["info"]["client"], alice.client_id.as_str());
        assert_eq!(presence_users(cluster.addr(B), channel).await, ["bob"]);
        alice.subscribe(channel).await;
        next_push(&mut bob, "alice's second join on C", within, |p| {
            is_join_of(p, "alice")
        })
        .await;
        assert_eq!(
            presence_users(cluster.addr(B), channel).await,
            ["alice", "bob"]
        );

        // C -> A: bob's connection closes; alice sees him leave and presence forgets him at once.
        let bob_client = bob.client_id.clone();
        close(bob).await;
        let push = next_push(&mut alice, "bob's leave on A", within, |p| {
            is_leave_of(p, "bob")
        })
        .await;
        assert_eq!(push["leave"]["info"]["client"], bob_client.as_str());
        assert_eq!(presence_users(cluster.addr(B), channel).await, ["alice"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovery_after_moving_from_a_to_c() {
        recovery_after_moving("recovery", BrokerKind::Redis).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats_recovery_after_moving_from_a_to_c() {
        recovery_after_moving("nats-recovery", BrokerKind::Nats).await;
    }

    /// A client leaves A with its position, 10 publications are made through B, and it
    /// recovers exactly those on C.
    async fn recovery_after_moving(test: &str, broker: BrokerKind) {
        let cluster = Cluster::start(test, broker, "").await;
        let channel = "rec:moving";
        let mut conn = user_conn(cluster.addr(A), "mover").await;
        let sub = conn
            .request_ok(json!({"subscribe": {"channel": channel}}))
            .await;
        assert_eq!(sub["recoverable"], true, "{sub}");
        let epoch = sub["epoch"].as_str().expect("an epoch").to_string();
        for n in 0..3 {
            publish(cluster.addr(B), channel, json!({ "n": n })).await;
        }
        let mut last = 0;
        for n in 0..3 {
            let (_, publication) = conn.next_publication().await;
            assert_eq!(publication["data"]["n"], n);
            last = publication["offset"].as_u64().unwrap();
        }
        assert_eq!(last, 3);
        close(conn).await;

        for n in 3..13 {
            let r = publish(cluster.addr(B), channel, json!({ "n": n })).await;
            assert_eq!(r["epoch"], epoch.as_str(), "{r}");
        }

        let mut conn = user_conn(cluster.addr(C), "mover").await;
        let sub = conn
            .request_ok(json!({"subscribe": {
                "channel": channel, "recover": true, "offset": last, "epoch": epoch,
            }}))
            .await;
        assert_eq!(sub["recovered"], true, "{sub}");
        assert_eq!(sub["was_recovering"], true, "{sub}");
        assert_eq!(sub["epoch"], epoch.as_str(), "{sub}");
        assert_eq!(sub["offset"], 13, "{sub}");
        let publications = sub["publications"].as_array().expect("publications");
        let got: Vec<(u64, u64)> = publications
            .iter()
            .map(|p| {
                (
                    p["offset"].as_u64().unwrap(),
                    p["data"]["n"].as_u64().unwrap(),
                )
            })
            .collect();
        let want: Vec<(u64, u64)> = (3..13).map(|n| (n + 1, n)).collect();
        assert_eq!(got, want, "{sub}");

        // The stream goes on where it was.
        publish(cluster.addr(A), channel, json!({ "n": 13 })).await;
        let (_, publication) = conn.next_publication().await;
        assert_eq!(publication["offset"], 14, "{publication}");
        conn.expect_silence(Duration::from_millis(300)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigkilled_node_leaves_presence_and_info() {
        const TTL: Duration = Duration::from_secs(3);
        let mut cluster = Cluster::start(
            "sigkill",
            BrokerKind::Redis,
            "presence_ttl = \"3s\"\npresence_update_interval = \"1s\"",
        )
        .await;
        let channel = "room:doomed";
        let mut alice = user_conn(cluster.addr(A), "alice").await;
        alice.subscribe(channel).await;
        let mut bob = user_conn(cluster.addr(C), "bob").await;
        bob.subscribe(channel).await;
        assert_eq!(
            presence_users(cluster.addr(B), channel).await,
            ["alice", "bob"]
        );

        cluster.nodes[C].kill();
        let killed = Instant::now();
        // Bob's connection ends with node C (after whatever was already on its way).
        while let Event::Json(_) = bob.next_event(TIMEOUT).await {}

        // Bob's entry expires within the TTL (it was refreshed at most 1 s before the kill).
        let gone = eventually(TTL + Duration::from_secs(2), || async {
            presence_users(cluster.addr(B), channel).await == ["alice"]
        })
        .await;
        let presence_after = killed.elapsed();
        assert!(
            gone,
            "bob still in presence {presence_after:?} after node C was killed: {:?}",
            presence(cluster.addr(B), channel).await
        );
        assert!(
            presence_after <= TTL + Duration::from_secs(1),
            "{presence_after:?}"
        );

        // C leaves info within NODE_EXPIRY (10 s) of its last announcement.
        let left = eventually(Duration::from_secs(12), || async {
            !cluster.info_names(B).await.contains("c")
        })
        .await;
        let info_after = killed.elapsed();
        assert!(
            left,
            "node c still in B's info {info_after:?} after the kill"
        );
        assert!(info_after <= Duration::from_secs(11), "{info_after:?}");
        cluster
            .wait_for_nodes(&[A, B], Duration::from_secs(2))
            .await;

        // Alice, refreshed by her live node, is still there long after the TTL.
        assert_eq!(presence_users(cluster.addr(B), channel).await, ["alice"]);
        alice.assert_alive().await;
        eprintln!(
        "[sigkill] bob left presence {presence_after:?} and node c left info {info_after:?} after \
         SIGKILL"
    );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn server_api_reaches_connections_on_other_nodes() {
        let cluster = Cluster::start("api", BrokerKind::Redis, "").await;
        let within = Duration::from_secs(5);

        // disconnect through B closes carol's connections on A and on C, not erin's.
        let mut carol_a = user_conn(cluster.addr(A), "carol").await;
        let mut carol_c = user_conn(cluster.addr(C), "carol").await;
        let mut erin_a = user_conn(cluster.addr(A), "erin").await;
        let r = api(
            cluster.addr(B),
            KEY,
            "disconnect",
            json!({"user": "carol", "disconnect": {"code": 4100, "reason": "banned"}}),
        )
        .await;
        assert_eq!(r, json!({"result": {}}));
        assert_eq!(carol_a.expect_close(4100, within).await, "banned");
        assert_eq!(carol_c.expect_close(4100, within).await, "banned");
        erin_a.assert_alive().await;

        // disconnect of one client through C: only that connection closes.
        let mut frank_1 = user_conn(cluster.addr(A), "frank").await;
        let mut frank_2 = user_conn(cluster.addr(A), "frank").await;
        api(
        cluster.addr(C),
        KEY,
        "disconnect",
        json!({"user": "frank", "client": frank_1.client_id, "disconnect": {"code": 3011, "reason": ""}}),
    )
    .await;
        frank_1.expect_close(3011, within).await;
        frank_2.assert_alive().await;

        // subscribe through C: dave on A gets the subscribe push, then the channel's publications.
        let mut dave = user_conn(cluster.addr(A), "dave").await;
        let channel = "news:flash";
        let r = api(
            cluster.addr(C),
            KEY,
            "subscribe",
            json!({"user": "dave", "channel": channel}),
        )
        .await;
        assert_eq!(r, json!({"result": {}}));
        let push = dave.next_json().await;
        assert_eq!(
            push,
            json!({"push": {"channel": channel, "subscribe": {}}}),
            "dave's first message"
        );
        publish(cluster.addr(B), channel, json!({"text": "hello dave"})).await;
        let (got, publication) = dave.next_publication().await;
        assert_eq!(got, channel);
        assert_eq!(publication["data"], json!({"text": "hello dave"}));

        // unsubscribe through B.
        api(
            cluster.addr(B),
            KEY,
            "unsubscribe",
            json!({"user": "dave", "channel": channel}),
        )
        .await;
        let push = dave.next_json().await;
        assert_eq!(push["push"]["channel"], channel, "{push}");
        assert_eq!(push["push"]["unsubscribe"]["code"], 2000, "{push}");
        publish(cluster.addr(B), channel, json!({"text": "gone"})).await;
        dave.expect_silence(Duration::from_millis(300)).await;
    }

    /// Keys are cleaned up (a sanity check of the cleanup itself, which every test relies on).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cleanup_deletes_the_prefix_keys() {
        let prefix;
        {
            let cluster = Cluster::start("cleanup", BrokerKind::Redis, "").await;
            prefix = cluster.prefix.clone();
            publish(cluster.addr(A), "feed:x", json!({})).await;
            let mut conn = user_conn(cluster.addr(B), "u").await;
            conn.subscribe("room:x").await;
            assert!(!redis_keys(&prefix).is_empty(), "the nodes wrote keys");
        }
        assert_eq!(redis_keys(&prefix), Vec::<String>::new());
    }

    /// A stand-in load balancer: accepts TCP on loopback and pipes each connection to the first
    /// backend that accepts one (no stickiness, no knowledge of WebSocket).
    struct Balancer {
        addr: SocketAddr,
        task: tokio::task::JoinHandle<()>,
    }

    impl Balancer {
        async fn start(backends: Vec<SocketAddr>) -> Balancer {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let task = tokio::spawn(async move {
                loop {
                    let Ok((mut downstream, _)) = listener.accept().await else {
                        return;
                    };
                    let backends = backends.clone();
                    tokio::spawn(async move {
                        for backend in backends {
                            if let Ok(mut upstream) = tokio::net::TcpStream::connect(backend).await
                            {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut downstream, &mut upstream)
                                        .await;
                                return;
                            }
                        }
                    });
                }
            });
            Balancer { addr, task }
        }
    }

    impl Drop for Balancer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// A rolling restart: node A, which holds a client (the Rust SDK, behind a load balancer), is
    /// stopped with SIGTERM while publications keep coming through B. The client is told 3001,
    /// reconnects through the balancer to C, recovers, and sees every publication exactly once,
    /// in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn graceful_shutdown_moves_clients_without_loss() {
        use switchboard_client::{Backoff, Client, ClientEvent, SubscriptionEvent};
        const N: u64 = 150;
        let mut cluster = Cluster::start("rolling", BrokerKind::Redis, "").await;
        let balancer = Balancer::start(vec![cluster.addr(A), cluster.addr(C)]).await;
        let channel = "rec:rolling";
        let client = Client::builder(format!("ws://{}/connection/websocket", balancer.addr))
            .token(token("roller"))
            .reconnect(Backoff {
                min: Duration::from_millis(50),
                max: Duration::from_millis(500),
                jitter: false,
            })
            .connect()
            .await
            .expect("connect through the balancer");
        let mut client_events = client.events();
        let mut sub = client.subscribe(channel).await.expect("subscribe");
        assert_eq!(
            api(cluster.addr(A), KEY, "channels", json!({})).await["result"]["channels"][channel]
                ["num_clients"],
            1,
            "the client is on node a"
        );

        // Publications through B, one every 5 ms, across the restart.
        let b = cluster.addr(B);
        let publisher = tokio::spawn(async move {
            for n in 0..N {
                publish(b, channel, json!({ "n": n })).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let exit = cluster.nodes[A].terminate();

        let mut seen = Vec::new();
        let mut subscribed = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        while seen.len() < N as usize {
            let event = tokio::time::timeout_at(deadline.into(), sub.recv_event())
                .await
                .unwrap_or_else(|_| panic!("only {} publications arrived: {seen:?}", seen.len()))
                .expect("the subscription lives on");
            match event {
                SubscriptionEvent::Publication(p) => {
                    seen.push((p.offset, p.value()["n"].as_u64().unwrap()));
                }
                SubscriptionEvent::Subscribed {
                    was_recovering,
                    recovered,
                    ..
                } => subscribed.push((was_recovering, recovered, seen.len())),
                other => panic!("unexpected {other:?}"),
            }
        }
        publisher.await.unwrap();
        let want: Vec<(u64, u64)> = (0..N).map(|n| (n + 1, n)).collect();
        assert_eq!(seen, want, "every publication once, in order");
        assert_eq!(
            subscribed.len(),
            2,
            "subscribed, then resubscribed: {subscribed:?}"
        );
        assert!(!subscribed[0].0, "first subscribe: {subscribed:?}");
        assert!(
            subscribed[1].0 && subscribed[1].1,
            "resubscribed with recovery: {subscribed:?}"
        );

        let mut codes = Vec::new();
        while let Ok(event) = client_events.try_recv() {
            if let ClientEvent::Disconnected { code, .. } = event {
                codes.push(code);
            }
        }
        assert_eq!(codes, [3001], "the client was told to reconnect once");
        let (status, exited) = exit.await.unwrap();
        assert!(status.unwrap().success());
        // drain_timeout is 2 s; the one client leaves at once.
        assert!(exited < Duration::from_secs(3), "{exited:?}");
        assert_eq!(
            api(cluster.addr(C), KEY, "channels", json!({})).await["result"]["channels"][channel]
                ["num_clients"],
            1,
            "the client is on node c now"
        );
        eprintln!(
            "[rolling] node a exited {exited:?} after SIGTERM; the client got all {N} \
         publications in order, resubscribing with recovery after the first {}",
            subscribed[1].2
        );
        client.disconnect().await;
    }

    /// A private `redis-server` on a spare port, killed when dropped.
    struct PrivateRedis {
        port: u16,
        child: Option<Child>,
    }

    impl PrivateRedis {
        async fn start(port: u16) -> PrivateRedis {
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("the Redis failure test needs redis-server on PATH");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let up = eventually(Duration::from_secs(5), || async {
                tokio::net::TcpStream::connect(addr).await.is_ok()
            })
            .await;
            assert!(up, "private redis-server on {port} did not start");
            PrivateRedis {
                port,
                child: Some(child),
            }
        }

        fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Drop for PrivateRedis {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// Waits until `addr` can read from Redis again (its command connection is up).
    async fn wait_for_redis_commands(addr: SocketAddr) {
        let ok = eventually(Duration::from_secs(5), || async {
            api(
                addr,
                KEY,
                "history",
                json!({"channel": "rec:probe", "limit": 0}),
            )
            .await
            .get("result")
            .is_some()
        })
        .await;
        assert!(ok, "node {addr} cannot reach Redis 5 s after it restarted");
    }

    /// Redis goes away under running nodes and comes back empty: clients stay connected, API calls
    /// that need Redis answer error 100 (temporary), positioned subscribers are told to resubscribe
    /// (2500) once Redis is back, and their recovery reports the loss; delivery resumes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_outage_keeps_clients_and_reports_the_gap() {
        let mut redis = PrivateRedis::start(support::closed_port()).await;
        let cluster = Cluster::start_on(
            "outage",
            BrokerKind::Redis,
            &format!("127.0.0.1:{}", redis.port),
            "",
        )
        .await;
        let positioned = "rec:outage";
        let plain = "feed:outage";
        let mut conn = user_conn(cluster.addr(A), "survivor").await;
        let sub = conn
            .request_ok(json!({"subscribe": {"channel": positioned}}))
            .await;
        let epoch = sub["epoch"].as_str().unwrap().to_string();
        conn.subscribe(plain).await;
        publish(cluster.addr(B), positioned, json!({"n": 0})).await;
        let (_, p) = conn.next_publication().await;
        assert_eq!(p["offset"], 1);

        redis.kill();
        let killed = Instant::now();
        // The first call may still find the dead connection open; within command_timeout (1 s)
        // calls fail.
        let refused = loop {
            let reply = api(
                cluster.addr(B),
                KEY,
                "publish",
                json!({"channel": positioned, "data": {"n": 1}}),
            )
            .await;
            if reply.get("error").is_some() {
                break reply;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(3),
                "publish still works without Redis: {reply}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            refused,
            json!({"error": {"code": 100, "message": "internal server error", "temporary": true}})
        );
        let refused_after = killed.elapsed();
        conn.assert_alive().await;

        let mut redis = PrivateRedis::start(redis.port).await;
        let restarted = Instant::now();
        let push = next_push(
            &mut conn,
            "unsubscribe 2500 after Redis came back",
            Duration::from_secs(10),
            |p| p["channel"] == positioned,
        )
        .await;
        let told_after = restarted.elapsed();
        assert_eq!(
            push["unsubscribe"],
            json!({"code": 2500, "reason": "insufficient state"}),
            "{push}"
        );
        // Redis lost everything: recovery from the old position says so. (Resubscribing the
        // instant the push arrives can fail with error 100: see
        // `resubscribe_right_after_2500_succeeds`. Here node A's commands work again first.)
        wait_for_redis_commands(cluster.addr(A)).await;
        let sub = conn
            .request_ok(json!({"subscribe": {
                "channel": positioned, "recover": true, "offset": 1, "epoch": epoch,
            }}))
            .await;
        assert_eq!(sub["was_recovering"], true, "{sub}");
        assert!(sub.get("recovered").is_none(), "{sub}");
        assert_ne!(sub["epoch"], epoch.as_str(), "{sub}");

        // Delivery resumes on both subscriptions.
        publish(cluster.addr(B), positioned, json!({"n": 2})).await;
        let (channel, p) = conn.next_publication().await;
        assert_eq!(
            (channel.as_str(), &p["data"]),
            (positioned, &json!({"n": 2}))
        );
        publish(cluster.addr(B), plain, json!({"n": 3})).await;
        let (channel, p) = conn.next_publication().await;
        assert_eq!((channel.as_str(), &p["data"]), (plain, &json!({"n": 3})));
        eprintln!(
            "[outage] API error 100 {refused_after:?} after Redis was killed; 2500 pushed \
         {told_after:?} after it restarted"
        );
        redis.kill();
    }

    /// A subscriber told to resubscribe (2500) after a Redis outage resubscribes at once, as
    /// the SDKs do. Twenty-five outages in a row; each time the resubscribe must succeed.
    ///
    /// Guards a fixed race: the broker reported the gap as soon as its pub/sub connection was
    /// back, before its command connection, so the resubscribe's history read could answer
    /// error 100. The broker now reports gaps once both connections are up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resubscribe_right_after_2500_succeeds() {
        let mut redis = PrivateRedis::start(support::closed_port()).await;
        let cluster = Cluster::start_on(
            "outage-race",
            BrokerKind::Redis,
            &format!("127.0.0.1:{}", redis.port),
            "",
        )
        .await;
        let channel = "rec:race";
        let mut conn = user_conn(cluster.addr(A), "racer").await;
        conn.subscribe(channel).await;
        let mut failures = Vec::new();
        for round in 0..25 {
            redis.kill();
            let down = eventually(Duration::from_secs(3), || async {
                api(
                    cluster.addr(A),
                    KEY,
                    "publish",
                    json!({"channel": channel, "data": {}}),
                )
                .await
                .get("error")
                .is_some()
            })
            .await;
            assert!(down, "round {round}: node A still publishes without Redis");
            redis = PrivateRedis::start(redis.port).await;
            next_push(&mut conn, "2500", Duration::from_secs(10), |p| {
                p["unsubscribe"]["code"] == 2500
            })
            .await;
            let reply = conn
                .request(json!({"subscribe": {"channel": channel}}))
                .await;
            if reply.get("error").is_some() {
                failures.push(format!("round {round}: {reply}"));
                wait_for_redis_commands(cluster.addr(A)).await;
                conn.subscribe(channel).await;
            }
        }
        assert!(
            failures.is_empty(),
            "resubscribe right after 2500 failed:\n{}",
            failures.join("\n")
        );
    }

    /// HTTP-streaming and SSE sessions on node A whose commands (`POST /emulation`) all go to
    /// nodes B and C, never to A: subscribe, publish, RPC (answered by the RPC proxy, which
    /// sees the real transport name), presence, a batch of two commands, and a server API
    /// publication through B all work. Then the answers for sessions that cannot be reached:
    /// an unknown session on the node asked is a 404, a malformed request a 400, and once A is
    /// killed (and B and C have stopped hearing from it) a batch for A's session is a 404 on B
    /// and on C.
    async fn emulation_without_sticky_sessions(test: &str, broker: BrokerKind) {
        require_service(broker);
        let rpc = support::Backend::start(|r| {
            support::Answer::json(json!({"result": {"data": {
                "echo": r.body["data"],
                "transport": r.body["transport"],
                "user": r.body["user"],
            }}}))
        })
        .await;
        let extra = format!(
            "[[channel.namespaces]]\nname = \"emu\"\nallow_subscribe_for_client = true\n\
             allow_publish_for_subscriber = true\npresence = true\n\
             allow_presence_for_subscriber = true\n\n\
             [transports]\nhttp_stream = true\nsse = true\n\n\
             [proxy]\nrpc_endpoint = \"{}\"\n",
            rpc.url("/rpc")
        );
        let cluster = Cluster::start_full(test, broker, REDIS, "", &extra).await;
        let mut sessions = Vec::new();
        for transport in ["http_stream", "sse"] {
            let user = format!("emu-{transport}");
            let channel = format!("emu:{transport}");
            let mut stream =
                EmuStream::open(cluster.addr(A), transport, json!({ "token": token(&user) })).await;
            let connect = stream.reply(1).await;
            let session = connect["connect"]["session"].as_str().unwrap().to_string();
            let node = connect["connect"]["node"].as_str().unwrap().to_string();
            assert!(!session.is_empty() && !node.is_empty(), "{connect}");
            let to = |n: usize| EmuTarget {
                addr: cluster.addr(n),
                session: session.clone(),
                node: node.clone(),
            };

            // Subscribe through B.
            let status = to(B)
                .post(&[json!({"id": 2, "subscribe": {"channel": channel}})])
                .await;
            assert_eq!(status, 204, "{transport}: subscribe through B");
            ok(&stream.reply(2).await);
            // Publish through C: the reply and the publication come back on A's stream.
            let status = to(C)
                .post(&[json!({"id": 3, "publish": {"channel": channel, "data": {"n": 1}}})])
                .await;
            assert_eq!(status, 204, "{transport}: publish through C");
            ok(&stream.reply(3).await);
            let publication = stream.publication(&channel).await;
            assert_eq!(publication["data"], json!({"n": 1}), "{transport}");
            // RPC through B: the proxy is called by A (the session's node) with the transport.
            to(B)
                .post(&[json!({"id": 4, "rpc": {"method": "echo", "data": {"x": 1}}})])
                .await;
            let reply = ok(&stream.reply(4).await);
            assert_eq!(
                reply["data"],
                json!({"echo": {"x": 1}, "transport": transport, "user": user}),
                "{transport}: rpc through B"
            );
            // Presence through C.
            to(C)
                .post(&[json!({"id": 5, "presence": {"channel": channel}})])
                .await;
            let reply = ok(&stream.reply(5).await);
            let users: Vec<&str> = reply["presence"]
                .as_object()
                .unwrap_or_else(|| panic!("presence reply: {reply}"))
                .values()
                .map(|c| c["user"].as_str().unwrap_or_default())
                .collect();
            assert_eq!(
                users,
                vec![user.as_str()],
                "{transport}: presence through C"
            );
            // Two commands in one request, through B.
            to(B)
                .post(&[
                    json!({"id": 6, "presence_stats": {"channel": channel}}),
                    json!({"id": 7, "rpc": {"method": "echo", "data": 7}}),
                ])
                .await;
            assert_eq!(ok(&stream.reply(6).await)["num_clients"], 1);
            assert_eq!(ok(&stream.reply(7).await)["data"]["echo"], 7);
            // A server API publication through B reaches the stream on A.
            publish(cluster.addr(B), &channel, json!({"n": 2})).await;
            let publication = stream.publication(&channel).await;
            assert_eq!(publication["data"], json!({"n": 2}), "{transport}");
            sessions.push((stream, to(B), to(C)));
        }
        let calls = rpc.requests();
        assert_eq!(calls.len(), 4, "{calls:?}");

        // Unknown sessions and malformed requests.
        let unknown = EmuTarget {
            addr: cluster.addr(B),
            session: "no-such-session".into(),
            node: String::new(),
        };
        assert_eq!(unknown.post(&[json!({"id": 1, "rpc": {}})]).await, 404);
        let status = reqwest::Client::new()
            .post(format!("http://{}/emulation", cluster.addr(C)))
            .body("{not json")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 400);

        // Node A goes down: its streams end, and B and C answer 404 for its sessions once
        // they no longer hear from it.
        let mut cluster = cluster;
        cluster.nodes[A].kill();
        for (stream, _, _) in &mut sessions {
            stream.expect_end(Duration::from_secs(5)).await;
        }
        let down = Instant::now();
        let names: BTreeSet<String> = ["b", "c"].iter().map(|s| s.to_string()).collect();
        for node in [B, C] {
            let gone = eventually(Duration::from_secs(20), || async {
                cluster.info_names(node).await == names
            })
            .await;
            assert!(gone, "node {node} still lists A after {:?}", down.elapsed());
        }
        for (_, via_b, via_c) in &sessions {
            for target in [via_b, via_c] {
                let status = target
                    .post(&[json!({"id": 8, "presence": {"channel": "emu:x"}})])
                    .await;
                assert_eq!(status, 404, "a batch for a session on the dead node A");
            }
        }
        eprintln!(
            "[{test}] both sessions worked through B and C; A's sessions are 404 {:?} after A died",
            down.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_emulation_reaches_the_session_from_any_node() {
        emulation_without_sticky_sessions("emulation", BrokerKind::Redis).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats_emulation_reaches_the_session_from_any_node() {
        emulation_without_sticky_sessions("nats-emulation", BrokerKind::Nats).await;
    }

    /// The `result` of a reply, failing on an error reply.
    fn ok(reply: &Value) -> Value {
        assert!(reply.get("error").is_none(), "error reply: {reply}");
        reply
            .as_object()
            .and_then(|o| o.iter().find(|(k, _)| *k != "id").map(|(_, v)| v.clone()))
            .unwrap_or(Value::Null)
    }
}
