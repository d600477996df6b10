//! `switchboard-bench`: load generator for Switchboard and the servers we compare it with.
//!
//! Scenarios (`switchboard-bench <scenario> --help` for every option):
//! - `fanout`: N subscribers on one channel, one publisher at a fixed or maximum rate;
//!   deliveries/s, end-to-end latency percentiles, lost/duplicated/reordered messages.
//! - `channels`: many channels with few subscribers each (the chat shape).
//! - `idle`: N subscribed connections held; server RSS per connection (from /proc), our own
//!   RSS, and a check that every connection still receives a broadcast. With `--disconnect`,
//!   then all of them closed at once and the time until the server released them
//!   (`GET /health`).
//! - `churn`: connect + subscribe + close cycles per second, sustained, with error counts.
//! - `soak`: N subscribed connections held for a long time while some reconnect and a
//!   publisher publishes; server RSS trend and error counters sampled throughout.
//!
//! Every run is bounded in time and count and ends by itself. A human summary goes to
//! stderr and exactly one JSON object per run to stdout, so scripts can parse stdout.
//!
//! Targets: `switchboard` (native protocol), `raw` (a peer that broadcasts every text frame
//! it receives to every other client) and `socketio` (Engine.IO v4 / Socket.IO v5: subscribers
//! `join` the channel's room, the publisher emits `broadcast` into it).

mod churn;
mod conn;
mod http;
mod idle;
mod pool;
mod publisher;
mod remote;
mod soak;
mod stats;
mod sys;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::conn::{Endpoint, Target};
use crate::pool::{Layout, Shared};
use crate::publisher::PublishPlan;
use crate::stats::{Integrity, Latency};

#[derive(Debug, Parser)]
#[command(
    name = "switchboard-bench",
    version,
    about = "Load generator for Switchboard and its peers"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N subscribers on one channel, one publisher at a fixed or maximum rate.
    Fanout(FanoutArgs),
    /// Many channels with few subscribers each, one publisher round-robin over them.
    Channels(ChannelsArgs),
    /// N subscribed connections held; memory per connection; one broadcast to all;
    /// `--disconnect`: then all closed at once, time until the server released them.
    Idle(idle::IdleArgs),
    /// Connect + subscribe + close cycles per second, sustained.
    Churn(churn::ChurnArgs),
    /// N subscribed connections for a long time with churn and publications; server RSS and
    /// error counters sampled throughout (leaks and slow failures show as trends).
    Soak(soak::SoakArgs),
}

/// Options every scenario has.
#[derive(Debug, Clone, Args)]
pub(crate) struct Common {
    /// Which protocol the server speaks.
    #[arg(long, value_enum, default_value = "switchboard")]
    target: Target,
    /// How subscribers connect to a `switchboard` target (fanout, channels, idle): WebSocket,
    /// or an HTTP transport with bidirectional emulation (`http_stream`, `sse`). The
    /// publisher always uses WebSocket.
    #[arg(long, value_enum, default_value = "websocket")]
    transport: http::Transport,
    /// Server URL; the path defaults per target (/connection/websocket, /, /socket.io/...).
    /// `idle --processes P` takes a comma-separated list: child i connects to URL i mod the
    /// list's length (subscribers spread over several nodes).
    #[arg(long, default_value = "ws://127.0.0.1:8000")]
    url: String,
    /// Spread connections over this many source addresses 127.0.0.B.. (0 = kernel's choice).
    /// Each address has its own ~28k ephemeral ports.
    #[arg(long, default_value_t = 0)]
    source_addrs: usize,
    /// First source address's last octet (127.0.0.B).
    #[arg(long, default_value_t = 2)]
    source_base: u8,
    /// Load generator threads (each a current-thread runtime); 1 suits a pinned core.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Give up connecting after this many seconds.
    #[arg(long, default_value_t = 60)]
    connect_timeout: u64,
    /// The server's PID, to report its RSS and CPU time; a comma-separated list sums
    /// several nodes.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Free text copied into the JSON line (e.g. the peer's name).
    #[arg(long, default_value = "")]
    label: String,
    /// Publish through this server instead of `--url` (cluster scenario: publisher on node A,
    /// subscribers on node B).
    #[arg(long)]
    publish_url: Option<String>,
}

impl Common {
    /// The one server URL of a single-process scenario.
    pub(crate) fn endpoint(&self) -> anyhow::Result<Endpoint> {
        match self.urls().as_slice() {
            [url] => self.endpoint_at(url),
            _ => anyhow::bail!("several --url values need `idle --processes`"),
        }
    }

    /// An endpoint for one of the `--url` values.
    pub(crate) fn endpoint_at(&self, url: &str) -> anyhow::Result<Endpoint> {
        if self.transport != http::Transport::Websocket && self.target != Target::Switchboard {
            anyhow::bail!(
                "--transport {} needs --target switchboard",
                self.transport.name()
            );
        }
        let mut ep = Endpoint::new(self.target, url, self.source_addrs, self.source_base)?;
        ep.transport = self.transport;
        Ok(ep)
    }

    /// The command line of child `i` of `processes` in a multi-process run of `scenario`:
    /// `--child`, its share of `total` connections (`count_flag`), `channel`, its URL
    /// (`urls[i % len]`), its own source address(es), and this run's other common options,
    /// with piped stdin/stdout.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn child_command(
        &self,
        scenario: &str,
        count_flag: &str,
        total: usize,
        channel: &str,
        urls: &[&str],
        i: usize,
        processes: usize,
    ) -> anyhow::Result<tokio::process::Command> {
        let exe = std::env::current_exe()?;
        let n = total / processes + usize::from(i < total % processes);
        let base = self.source_base as usize + i * self.source_addrs.max(1);
        if base > 254 {
            anyhow::bail!("too many processes for the 127.0.0.x source addresses");
        }
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg(scenario)
            .arg("--child")
            .args([count_flag, &n.to_string()])
            .args(["--channel", channel])
            .args(["--target", target_name(self.target)])
            .args(["--transport", self.transport.name()])
            .args(["--url", urls[i % urls.len()]])
            .args(["--source-addrs", &self.source_addrs.max(1).to_string()])
            .args(["--source-base", &base.to_string()])
            .args(["--threads", &self.threads.to_string()])
            .args([
                "--connect-concurrency",
                &(self.connect_concurrency / processes).max(1).to_string(),
            ])
            .args(["--connect-timeout", &self.connect_timeout.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// Every URL of `--url` (comma-separated).
    pub(crate) fn urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// The servers' summed resident set size (None without `--server-pid` or when one
    /// cannot be read).
    pub(crate) fn server_rss(&self) -> Option<u64> {
        sum_over(&self.server_pid, sys::rss_bytes)
    }

    /// The servers' summed CPU time in seconds.
    pub(crate) fn server_cpu(&self) -> Option<f64> {
        sum_over(&self.server_pid, sys::cpu_seconds)
    }

    /// The publisher's endpoint when it differs from the subscribers'.
    pub(crate) fn publish_endpoint(&self) -> anyhow::Result<Option<Endpoint>> {
        self.publish_url
            .as_deref()
            .map(|url| Endpoint::new(self.target, url, self.source_addrs, self.source_base))
            .transpose()
    }
}

fn sum_over<T: std::iter::Sum<T>>(pids: &[u32], read: impl Fn(u32) -> Option<T>) -> Option<T> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| read(pid)).sum()
}

/// Publishing options shared by `fanout` and `channels`.
#[derive(Debug, Clone, Args)]
struct PublishArgs {
    /// Messages per second (all channels together); 0 = maximum rate, flow-controlled by
    /// the slowest subscriber (see --window).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Max rate: messages the publisher may be ahead of the slowest subscriber.
    #[arg(long, default_value_t = 64)]
    window: u64,
    /// Seconds of measured publishing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of publishing before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Stop after this many messages (0 = only the duration bounds the run).
    #[arg(long, default_value_t = 0)]
    messages: u64,
    /// Payload size in bytes (the JSON object each message carries).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Seconds to wait for in-flight messages after the last one was sent.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
}

impl PublishArgs {
    fn plan(&self) -> PublishPlan {
        PublishPlan {
            rate: self.rate,
            window: self.window,
            warmup: Duration::from_secs_f64(self.warmup),
            duration: Duration::from_secs_f64(self.duration),
            max_messages: self.messages,
            payload: self.payload.max(40),
            drain: Duration::from_secs_f64(self.drain),
        }
    }
}

#[derive(Debug, Clone, Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    publish: PublishArgs,
    /// Subscribers on the channel.
    #[arg(long, short = 'n', default_value_t = 1000)]
    subscribers: usize,
    /// Channel name.
    #[arg(long, default_value = "bench")]
    channel: String,
    /// Spread the subscribers over this many child processes (one process holds at most its
    /// open-files limit of sockets); with a comma-separated `--url` list, child i connects
    /// to URL i mod the list's length. The publisher stays in this process.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Internal: run as a subscriber child of a multi-process run.
    #[arg(long, hide = true)]
    child: bool,
}

#[derive(Debug, Clone, Args)]
struct ChannelsArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    publish: PublishArgs,
    /// Number of channels.
    #[arg(long, default_value_t = 1000)]
    channels: usize,
    /// Subscribers per channel.
    #[arg(long, default_value_t = 5)]
    per_channel: usize,
    /// Channel name prefix (channels are PREFIX0, PREFIX1, ...).
    #[arg(long, default_value = "room")]
    prefix: String,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Fanout(a) => {
            let layout = Layout {
                subscribers: a.subscribers,
                channels: 1,
                channel_prefix: a.channel.clone(),
            };
            if a.child {
                remote::run_child(&a.common, &a.publish.plan(), layout)
            } else {
                publish_scenario("fanout", &a.common, &a.publish, layout, a.processes)
            }
        }
        Scenario::Channels(a) => {
            if a.common.target == Target::Raw {
                eprintln!("channels: the raw target has no channels (it broadcasts to everyone)");
                std::process::exit(2);
            }
            let layout = Layout {
                subscribers: a.channels * a.per_channel,
                channels: a.channels.max(1),
                channel_prefix: a.prefix.clone(),
            };
            publish_scenario("channels", &a.common, &a.publish, layout, 1)
        }
        Scenario::Idle(a) => idle::run(&a),
        Scenario::Churn(a) => churn::run(&a),
        Scenario::Soak(a) => soak::run(&a),
    };
    if let Err(e) = result {
        eprintln!("switchboard-bench: {e:#}");
        std::process::exit(1);
    }
}

/// The `--target` value naming `t` (for child processes' command lines).
pub(crate) fn target_name(t: Target) -> &'static str {
    match t {
        Target::Switchboard => "switchboard",
        Target::Raw => "raw",
        Target::Socketio => "socketio",
    }
}

/// Checks that `connections` sockets fit under the open-files limit of one process.
pub(crate) fn check_fd_limit(connections: usize) -> anyhow::Result<()> {
    if let Some(limit) = sys::open_files_limit() {
        if connections as u64 + 64 > limit {
            anyhow::bail!(
                "{connections} connections need more than this process's open-files limit ({limit}); \
                 use fewer, raise `ulimit -n`, or (idle) split with --processes"
            );
        }
    }
    Ok(())
}

fn publish_scenario(
    name: &str,
    common: &Common,
    publish: &PublishArgs,
    layout: Layout,
    processes: usize,
) -> anyhow::Result<()> {
    let plan = publish.plan();
    let server_rss_before = common.server_rss();
    let cpu_before = common.server_cpu();
    let tool_cpu_before = sys::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let t0 = std::time::Instant::now();
    let outcome = if processes > 1 {
        remote::run_parent(common, &plan, &layout, processes, t0)?
    } else {
        run_local(common, &plan, &layout, t0)?
    };
    let cpu_after = common.server_cpu();
    let server_rss = common.server_rss();
    let server_cpu = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let Outcome {
        published,
        hist,
        integrity,
        delivered,
        delivered_window,
        connected,
        failed,
        connect_errors,
        connect_secs,
        children_cpu_s,
    } = outcome;
    let latency = Latency::from_histogram(&hist);
    let dps = if published.window_secs > 0.0 {
        delivered_window as f64 / published.window_secs
    } else {
        0.0
    };
    let msg_rate = if published.window_secs > 0.0 {
        published.sent_window as f64 / published.window_secs
    } else {
        0.0
    };
    let tool_cpu =
        sys::cpu_seconds(std::process::id()).map(|c| c - tool_cpu_before + children_cpu_s);

    eprintln!(
        "{name} [{:?}{}] {} subscribers on {} channel(s), rate {}, payload {} B{}",
        common.target,
        if common.label.is_empty() {
            String::new()
        } else {
            format!(" {}", common.label)
        },
        layout.subscribers,
        layout.channels,
        if plan.rate == 0 {
            "max".to_string()
        } else {
            format!("{}/s", plan.rate)
        },
        plan.payload,
        if processes > 1 {
            format!(", {processes} subscriber processes")
        } else {
            String::new()
        }
    );
    eprintln!(
        "  connected {connected}, failed {failed} in {connect_secs:.1}s{}",
        if connect_errors.is_empty() {
            String::new()
        } else {
            format!(" ({connect_errors:?})")
        }
    );
    if let Some(f) = &published.failure {
        eprintln!("  publisher failed: {f}");
    }
    eprintln!(
        "  sent {} messages ({:.0}/s over {:.1}s measured), {} deliveries",
        published.sent, msg_rate, published.window_secs, delivered
    );
    eprintln!("  deliveries/s: {dps:.0}");
    eprintln!(
        "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        latency.p50_ms, latency.p90_ms, latency.p99_ms, latency.p999_ms, latency.max_ms
    );
    eprintln!(
        "  lost {}  duplicated {}  out of order {}  (subscribers affected {}, disconnected {}{})",
        integrity.lost,
        integrity.duplicated,
        integrity.out_of_order,
        integrity.subscribers_affected,
        integrity.subscribers_disconnected,
        if integrity.disconnect_reasons.is_empty() {
            String::new()
        } else {
            format!(": {:?}", integrity.disconnect_reasons)
        }
    );
    let elapsed = t0.elapsed().as_secs_f64();
    if let Some(cpu) = server_cpu {
        eprintln!(
            "  server CPU {:.2}s ({:.0}% of the run), RSS {} MiB",
            cpu,
            100.0 * cpu / elapsed,
            server_rss.unwrap_or(0) >> 20
        );
    }
    if let Some(cpu) = tool_cpu {
        eprintln!(
            "  load tool CPU {:.2}s ({:.0}% of the run)",
            cpu,
            100.0 * cpu / elapsed
        );
    }
    let line = json!({
        "scenario": name,
        "target": common.target,
        "transport": common.transport,
        "label": common.label,
        "subscribers": layout.subscribers,
        "channels": layout.channels,
        "rate": plan.rate,
        "window": plan.window,
        "payload": plan.payload,
        "duration_s": published.window_secs,
        "connected": connected,
        "connect_failed": failed,
        "connect_errors": connect_errors,
        "messages_sent": published.sent,
        "messages_per_sec": msg_rate,
        "deliveries": delivered,
        "deliveries_per_sec": dps,
        "latency": latency,
        "integrity": integrity,
        "publish_errors": published.errors,
        "publisher_failure": published.failure,
        "barrier_ok": published.barrier_ok,
        "server_cpu_s": server_cpu,
        "server_rss_bytes_before": server_rss_before,
        "server_rss_bytes": server_rss,
        "tool_rss_bytes": sys::self_rss_bytes(),
        "tool_cpu_s": tool_cpu,
        "processes": processes,
        "elapsed_s": t0.elapsed().as_secs_f64(),
    });
    println!("{line}");
    Ok(())
}

/// What a publish scenario measured, however its subscribers were spread.
pub(crate) struct Outcome {
    pub(crate) published: publisher::Published,
    pub(crate) hist: hdrhistogram::Histogram<u64>,
    pub(crate) integrity: Integrity,
    pub(crate) delivered: u64,
    pub(crate) delivered_window: u64,
    pub(crate) connected: usize,
    pub(crate) failed: usize,
    pub(crate) connect_errors: Vec<(String, u64)>,
    pub(crate) connect_secs: f64,
    /// CPU seconds used by subscriber child processes (multi-process runs).
    pub(crate) children_cpu_s: f64,
}

/// All subscribers in this process.
fn run_local(
    common: &Common,
    plan: &PublishPlan,
    layout: &Layout,
    t0: std::time::Instant,
) -> anyhow::Result<Outcome> {
    check_fd_limit(layout.subscribers + 1)?;
    let flow_control = plan.rate == 0;
    let shared = Shared::new(
        common.endpoint()?,
        common.publish_endpoint()?,
        layout.clone(),
        flow_control,
        common.connect_concurrency,
    );
    let connect_timeout = Duration::from_secs(common.connect_timeout);
    let connect_secs = std::sync::Arc::new(std::sync::Mutex::new(0.0f64));
    let cs = connect_secs.clone();
    let plan2 = plan.clone();
    let (published, workers) =
        pool::run(shared.clone(), common.threads, move |shared| async move {
            shared.wait_connected(connect_timeout, true).await;
            *cs.lock().unwrap_or_else(|p| p.into_inner()) = t0.elapsed().as_secs_f64();
            publisher::run(&shared, &plan2).await
        })?;
    let (hist, integrity) = stats::collect(&workers, layout.channels as u64, published.sent);
    let connect_secs = *connect_secs.lock().unwrap_or_else(|p| p.into_inner());
    let connect_errors = shared
        .connect_errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Outcome {
        published,
        hist,
        integrity,
        delivered: shared.delivered.load(std::sync::atomic::Ordering::Relaxed),
        delivered_window: shared
            .delivered_window
            .load(std::sync::atomic::Ordering::Relaxed),
        connected: shared.connected.load(std::sync::atomic::Ordering::Relaxed),
        failed: shared.failed.load(std::sync::atomic::Ordering::Relaxed),
        connect_errors,
        connect_secs,
        children_cpu_s: 0.0,
    })
}
