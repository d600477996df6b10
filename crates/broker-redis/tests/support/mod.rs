//! Shared fixtures: unique prefixes on the shared local Redis, private `redis-server` processes
//! (standalone, sentinel, cluster) on spare ports, key cleanup, and the hub's test helpers (an
//! event recorder, polling with a deadline, sample publications).

#![allow(dead_code, unreachable_pub, unused_imports)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_broker_redis::{RedisBroker, RedisConfig};
use switchboard_hub::{Broker, PublishOptions};

/// The hub's test helpers, shared with the conformance suite and the NATS broker's tests.
pub use switchboard_hub::conformance::{
    eventually, info, publication, until_ok, RecordingEvents as Recorder,
};

/// The shared local Redis every developer machine and CI has.
pub const LOCAL_REDIS: &str = "redis://127.0.0.1:6379";

/// A key prefix no other run uses.
pub fn unique_prefix() -> String {
    format!("sbtest-{}", uuid::Uuid::new_v4().simple())
}

/// A config with short timeouts, for tests.
pub fn config(addresses: &[String], prefix: &str) -> RedisConfig {
    let mut c = RedisConfig::default();
    c.addresses = addresses.to_vec();
    c.prefix = prefix.to_string();
    c.connect_timeout = Duration::from_millis(1000);
    c.command_timeout = Duration::from_millis(500);
    c.reconnect_max_delay = Duration::from_millis(300);
    c.health_check_interval = Duration::from_millis(300);
    c
}

/// Connects and starts a broker with a fresh recorder.
pub async fn started(config: RedisConfig, node: &str) -> (Arc<RedisBroker>, Arc<Recorder>) {
    let broker = RedisBroker::connect(config, node)
        .await
        .expect("valid config");
    let recorder = Arc::new(Recorder::default());
    broker.start(recorder.clone());
    assert!(
        broker.connected(),
        "broker connected within connect_timeout"
    );
    (broker, recorder)
}

/// Deletes every key starting with `prefix` (SCAN + DEL; never FLUSH).
pub fn cleanup(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
        return;
    };
    let keys = scan(&mut conn, prefix);
    for chunk in keys.chunks(500) {
        let _: Result<i64, _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
    }
}

fn scan(conn: &mut redis::Connection, prefix: &str) -> Vec<String> {
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query(conn)
            .unwrap_or_default();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// Keys starting with `prefix` on the Redis at `url`.
pub fn keys(url: &str, prefix: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    scan(&mut conn, prefix)
}

/// Number of keys starting with `prefix` on the Redis at `url`.
pub fn key_count(url: &str, prefix: &str) -> usize {
    keys(url, prefix).len()
}

/// Publishes a publication without history into `channel` and waits until `events` has it: the
/// broker publishes and receives (again).
pub async fn delivers(broker: &RedisBroker, events: &Recorder, channel: &str) {
    let before = events.publications(channel).len();
    broker
        .publish(channel, publication(1), &PublishOptions::default())
        .await
        .unwrap();
    eventually("the publication", Duration::from_secs(5), || {
        events.publications(channel).len() == before + 1
    })
    .await;
}

/// Options for a channel with history: 10 publications for a minute.
pub fn history_options() -> PublishOptions {
    switchboard_hub::conformance::history_options(10, Duration::from_secs(60))
}

/// A port that is free now, whose cluster bus port (+10000) is free too.
pub fn spare_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port > 55000 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("sb-redis-{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether something on `port` answers PING with PONG.
pub fn pings(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// A private `redis-server` (or sentinel) process, SIGKILLed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A standalone server without persistence.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with extra arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let port = spare_port();
        let dir = temp_dir("server");
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = Self {
            port,
            dir,
            args,
            child: None,
        };
        server.launch();
        server
    }

    /// A sentinel monitoring `master` as `mymaster`.
    pub fn sentinel(master: &RedisServer) -> Self {
        let port = spare_port();
        let dir = temp_dir("sentinel");
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds mymaster 2000\nsentinel failover-timeout mymaster 5000\n",
                dir.display(),
                master.port
            ),
        )
        .unwrap();
        let mut server = Self {
            port,
            dir,
            args: vec![conf.display().to_string(), "--sentinel".into()],
            child: None,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pings(self.port) {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the process (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused process (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
        if signal == "-STOP" {
            switchboard_hub::conformance::wait_stopped(pid);
        }
    }

    /// Starts again on the same port with the same arguments.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Closes the connections of one client type (`normal`, `pubsub`, ...) with CLIENT KILL.
    /// Redis closes them before it answers, so they are dead when this returns.
    pub fn kill_clients(&self, kind: &str) {
        let killed = self.cli(&["client", "kill", "type", kind]);
        assert!(
            killed.trim().parse::<u32>().is_ok_and(|n| n > 0),
            "CLIENT KILL TYPE {kind}: {killed}"
        );
    }

    /// Runs `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A paused process still dies of SIGKILL; resume anyway so nothing lingers stopped.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(self.child.as_ref().map_or(0, |c| c.id()).to_string())
                .status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A 3-master Redis Cluster of private servers.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes
            .iter()
            .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
