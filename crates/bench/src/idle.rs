//! `idle`: hold N subscribed connections, measure memory, check one broadcast reaches all.
//!
//! One process holds at most its open-files limit of sockets (20,000 on the reference
//! machine). With `--processes P` the tool re-executes itself P times as children
//! (`idle --child`), each holding N/P connections from its own source address 127.0.0.(B+i);
//! the parent only publishes and sums. Children talk to the parent over stdin/stdout lines:
//! `READY {json}` when connected, `RECEIVED n` when asked with `REPORT`; they exit when their
//! stdin closes.
//!
//! `--disconnect` then measures a mass disconnect: once the broadcast check is done, every
//! connection is closed at once (the children are killed, or this process's pool is dropped)
//! and the server's `GET /health` is polled every `--poll-ms` until its `connections` is back
//! at the count read before connecting. `disconnect_all_ms` is the time from the close to
//! that poll (so it is late by at most one poll interval and one request), with the server CPU
//! time spent in between (switchboard target only: the others have no `/health`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::json;
use switchboard_ws::Message;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::conn::{self, HealthProbe, Target};
use crate::pool::{self, Layout, ReadyTotals, Shared};
use crate::sys::{self, now_ns};
use crate::Common;

#[derive(Debug, Clone, Args)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to hold (each subscribed to --channel).
    #[arg(long, short = 'n', default_value_t = 10_000)]
    connections: usize,
    /// Channel every connection subscribes to.
    #[arg(long, default_value = "idle")]
    channel: String,
    /// Seconds to let the server settle before reading its RSS.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// Seconds to keep holding the connections after measuring.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    /// Seconds to wait for the check broadcast to reach every connection.
    #[arg(long, default_value_t = 10.0)]
    broadcast_wait: f64,
    /// Split the connections over this many child processes (one process holds at most
    /// its open-files limit of sockets).
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// After the broadcast check, close every connection at once and poll the server's
    /// `GET /health` until it released them all: `disconnect_all_ms` (switchboard only).
    #[arg(long)]
    disconnect: bool,
    /// `--disconnect`: milliseconds between two `GET /health` polls.
    #[arg(long, default_value_t = 5)]
    poll_ms: u64,
    /// `--disconnect`: seconds to wait for the server to release every connection.
    #[arg(long, default_value_t = 60.0)]
    disconnect_wait: f64,
    /// Internal: run as a child of a multi-process run.
    #[arg(long, hide = true)]
    child: bool,
}

pub(crate) fn run(a: &IdleArgs) -> anyhow::Result<()> {
    if a.child {
        return child(a);
    }
    if a.processes <= 1 {
        crate::check_fd_limit(a.connections + 1)?;
        return local_hold(a);
    }
    let rss_before = a.common.server_rss();
    let t0 = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(parent(a, rss_before, t0))
}

/// Single process: connect, measure, broadcast, report.
fn local_hold(a: &IdleArgs) -> anyhow::Result<()> {
    let layout = Layout {
        subscribers: a.connections,
        channels: 1,
        channel_prefix: a.channel.clone(),
    };
    let shared = Shared::new(
        a.common.endpoint()?,
        a.common.publish_endpoint()?,
        layout,
        false,
        a.common.connect_concurrency,
    );
    // The health probe's runtime, used before the pool starts and after it is dropped.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let release = rt.block_on(Release::open(a, &a.common.urls()))?;
    let rss_before = a.common.server_rss();
    let tool_rss_before = sys::self_rss_bytes().unwrap_or(0);
    let t0 = std::time::Instant::now();
    let args = a.clone();
    let (out, _) = pool::run(shared, a.common.threads, move |shared| async move {
        let timeout = Duration::from_secs(args.common.connect_timeout);
        shared.wait_connected(timeout, true).await;
        let connect_s = t0.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        let rss = args.common.server_rss();
        let tool_rss = sys::self_rss_bytes().unwrap_or(0);
        let received = broadcast(&shared, &args.channel, args.broadcast_wait).await;
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
        // The pool drops every connection as soon as this returns.
        let cpu_at_close = args.common.server_cpu();
        (
            connect_s,
            rss,
            tool_rss,
            received,
            (Instant::now(), cpu_at_close),
        )
    })?;
    let (connect_s, rss_after, tool_rss, received, (closed, cpu_at_close)) = out;
    let released = release.map(|r| rt.block_on(r.wait(a, closed, cpu_at_close)));
    report(
        a,
        Summary {
            connected: received.1,
            failed: received.2,
            connect_s,
            rss_before,
            rss_after,
            tool_rss: vec![tool_rss],
            tool_rss_before,
            received: received.0,
            broadcast_error: received.3,
            errors: received.4,
            released,
        },
    );
    Ok(())
}

/// Sends one broadcast (the barrier message) and counts connections that got it.
/// Returns (received, connected, failed, publisher error, connect errors).
async fn broadcast(
    shared: &Arc<Shared>,
    channel: &str,
    wait: f64,
) -> (usize, usize, usize, Option<String>, Vec<(String, u64)>) {
    let err = send_broadcast(shared, channel)
        .await
        .err()
        .map(|e| format!("{e:#}"));
    let deadline = now_ns() + (wait * 1e9) as u64;
    while now_ns() < deadline && shared.barrier.load(Relaxed) < shared.alive.load(Relaxed) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let errors = shared
        .connect_errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    (
        shared.barrier.load(Relaxed),
        shared.connected.load(Relaxed),
        shared.failed.load(Relaxed),
        err,
        errors,
    )
}

async fn send_broadcast(shared: &Shared, channel: &str) -> anyhow::Result<()> {
    let ep = shared.publish_endpoint.as_ref().unwrap_or(&shared.endpoint);
    let mut ws = ep.publisher().await.context("publisher connect")?;
    let mut p = Vec::new();
    conn::payload(0, now_ns(), 64, &mut p);
    ws.send(Message::Text(conn::publish_frame(
        ep.target, 2, channel, &p,
    )))
    .await?;
    // Keep the publisher open a moment so that peers that broadcast on receipt get it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = ws.close(1000, "").await;
    Ok(())
}

struct Summary {
    connected: usize,
    failed: usize,
    connect_s: f64,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    tool_rss: Vec<u64>,
    tool_rss_before: u64,
    received: usize,
    broadcast_error: Option<String>,
    errors: Vec<(String, u64)>,
    released: Option<Released>,
}

/// `--disconnect`: a health probe per node and the nodes' connections before connecting.
struct Release {
    probes: Vec<HealthProbe>,
    start: u64,
}

/// What `--disconnect` measured.
struct Released {
    start: u64,
    /// Milliseconds from the close to the nodes reporting `start` again (None: not within
    /// `--disconnect-wait`).
    all_ms: Option<f64>,
    /// Connections the nodes still held above `start` at the last poll.
    remaining: u64,
    server_cpu_s: Option<f64>,
    polls: u64,
    error: Option<String>,
}

impl Release {
    /// Probes every node of `urls` when `--disconnect` is set and reads their count.
    async fn open(a: &IdleArgs, urls: &[&str]) -> anyhow::Result<Option<Self>> {
        if !a.disconnect {
            return Ok(None);
        }
        if a.common.target != Target::Switchboard {
            bail!("--disconnect polls the server's GET /health: --target switchboard only");
        }
        let mut urls = urls.to_vec();
        urls.sort_unstable();
        urls.dedup();
        let mut probes = urls
            .iter()
            .map(|u| Ok(HealthProbe::new(&a.common.endpoint_at(u)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let start = count(&mut probes).await.context("GET /health")?;
        Ok(Some(Self { probes, start }))
    }

    /// Polls until the nodes are back at their starting count; the connections were closed
    /// at `closed`, when the servers had used `cpu_at_close` seconds of CPU.
    async fn wait(mut self, a: &IdleArgs, closed: Instant, cpu_at_close: Option<f64>) -> Released {
        let deadline = closed + Duration::from_secs_f64(a.disconnect_wait);
        let mut out = Released {
            start: self.start,
            all_ms: None,
            remaining: 0,
            server_cpu_s: None,
            polls: 0,
            error: None,
        };
        loop {
            out.polls += 1;
            match count(&mut self.probes).await {
                Ok(n) if n <= self.start => {
                    out.all_ms = Some(closed.elapsed().as_secs_f64() * 1e3);
                    out.remaining = 0;
                    break;
                }
                Ok(n) => out.remaining = n - self.start,
                Err(e) => out.error = Some(format!("{e:#}")),
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(a.poll_ms)).await;
        }
        out.server_cpu_s = match (cpu_at_close, a.common.server_cpu()) {
            (Some(before), Some(after)) => Some(after - before),
            _ => None,
        };
        out
    }
}

/// The nodes' summed `connections`.
async fn count(probes: &mut [HealthProbe]) -> anyhow::Result<u64> {
    let mut n = 0;
    for p in probes {
        n += p.connections().await?;
    }
    Ok(n)
}

fn report(a: &IdleArgs, s: Summary) {
    let per_conn = match (s.rss_before, s.rss_after) {
        (Some(b), Some(after)) if s.connected > 0 => {
            Some((after as f64 - b as f64) / s.connected as f64)
        }
        _ => None,
    };
    let tool_total: u64 = s.tool_rss.iter().sum();
    let tool_per_conn = if s.connected > 0 {
        Some((tool_total as f64 - s.tool_rss_before as f64).max(0.0) / s.connected as f64)
    } else {
        None
    };
    eprintln!(
        "idle [{:?}{}] {} connections ({} failed) in {:.1}s, {} process(es)",
        a.common.target,
        if a.common.label.is_empty() {
            String::new()
        } else {
            format!(" {}", a.common.label)
        },
        s.connected,
        s.failed,
        s.connect_s,
        a.processes.max(1)
    );
    if !s.errors.is_empty() {
        eprintln!("  connect errors: {:?}", s.errors);
    }
    match (s.rss_before, s.rss_after, per_conn) {
        (Some(b), Some(after), Some(pc)) => eprintln!(
            "  server RSS {:.1} MiB -> {:.1} MiB: {:.0} bytes ({:.2} KiB) per connection",
            b as f64 / 1048576.0,
            after as f64 / 1048576.0,
            pc,
            pc / 1024.0
        ),
        _ => eprintln!("  server RSS: pass --server-pid to measure"),
    }
    eprintln!(
        "  load tool RSS {:.1} MiB ({:.0} bytes per connection)",
        tool_total as f64 / 1048576.0,
        tool_per_conn.unwrap_or(0.0)
    );
    eprintln!(
        "  broadcast reached {} of {} connections{}",
        s.received,
        s.connected,
        s.broadcast_error
            .as_deref()
            .map(|e| format!(" (publisher: {e})"))
            .unwrap_or_default()
    );
    let r = s.released.as_ref();
    if let Some(r) = r {
        match r.all_ms {
            Some(ms) => eprintln!(
                "  disconnect: the server released every connection {ms:.0} ms after the close \
                 (server CPU {:.2}s, {} health polls)",
                r.server_cpu_s.unwrap_or(0.0),
                r.polls
            ),
            None => eprintln!(
                "  disconnect: the server still held {} connections {:.0} s after the close{}",
                r.remaining,
                a.disconnect_wait,
                r.error
                    .as_deref()
                    .map(|e| format!(" (health: {e})"))
                    .unwrap_or_default()
            ),
        }
    }
    let line = json!({
        "scenario": "idle",
        "target": a.common.target,
        "transport": a.common.transport,
        "label": a.common.label,
        "connections": a.connections,
        "connected": s.connected,
        "connect_failed": s.failed,
        "connect_errors": s.errors,
        "connect_s": s.connect_s,
        "processes": a.processes.max(1),
        "server_rss_bytes_before": s.rss_before,
        "server_rss_bytes": s.rss_after,
        "server_bytes_per_connection": per_conn,
        "tool_rss_bytes": tool_total,
        "tool_bytes_per_connection": tool_per_conn,
        "broadcast_received": s.received,
        "broadcast_error": s.broadcast_error,
        "disconnect_start": r.map(|r| r.start),
        "disconnect_all_ms": r.and_then(|r| r.all_ms),
        "disconnect_remaining": r.map(|r| r.remaining),
        "disconnect_server_cpu_s": r.and_then(|r| r.server_cpu_s),
        "disconnect_polls": r.map(|r| r.polls),
        "disconnect_error": r.and_then(|r| r.error.clone()),
    });
    println!("{line}");
}

/// Child of a multi-process run: hold connections, report, answer REPORT, exit on EOF.
fn child(a: &IdleArgs) -> anyhow::Result<()> {
    crate::check_fd_limit(a.connections + 1)?;
    let layout = Layout {
        subscribers: a.connections,
        channels: 1,
        channel_prefix: a.channel.clone(),
    };
    let shared = Shared::new(
        a.common.endpoint()?,
        None,
        layout,
        false,
        a.common.connect_concurrency,
    );
    let timeout = Duration::from_secs(a.common.connect_timeout);
    pool::run(shared, a.common.threads, move |shared| async move {
        shared.wait_connected(timeout, false).await;
        println!("READY {}", shared.ready_report());
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == "REPORT" {
                println!("RECEIVED {}", shared.barrier.load(Relaxed));
            }
        }
    })?;
    Ok(())
}

/// Parent of a multi-process run.
async fn parent(
    a: &IdleArgs,
    rss_before: Option<u64>,
    t0: std::time::Instant,
) -> anyhow::Result<()> {
    let p = a.processes;
    let urls = a.common.urls();
    if urls.is_empty() {
        bail!("--url is empty");
    }
    let release = Release::open(a, &urls).await?;
    let mut children = Vec::new();
    for i in 0..p {
        let mut cmd = a.common.child_command(
            "idle",
            "--connections",
            a.connections,
            &a.channel,
            &urls,
            i,
            p,
        )?;
        let mut child = cmd.spawn().context("spawn child")?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?).lines();
        children.push((child, stdin, stdout));
    }
    let mut ready = ReadyTotals::default();
    for (_, _, out) in &mut children {
        let line = out
            .next_line()
            .await?
            .context("child exited before READY")?;
        ready.add(&serde_json::from_str(
            line.strip_prefix("READY ").context("expected READY")?,
        )?);
    }
    let ReadyTotals {
        connected,
        failed,
        errors,
        rss: tool_rss,
    } = ready;
    let connect_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
    let rss_after = a.common.server_rss();

    // The broadcast goes through --publish-url, or else the first node.
    let ep = match a.common.publish_endpoint()? {
        Some(ep) => ep,
        None => a.common.endpoint_at(urls[0])?,
    };
    let layout = Layout {
        subscribers: 0,
        channels: 1,
        channel_prefix: a.channel.clone(),
    };
    let shared = Shared::new(ep, None, layout, false, 1);
    let broadcast_error = send_broadcast(&shared, &a.channel)
        .await
        .err()
        .map(|e| format!("{e:#}"));
    let deadline = now_ns() + (a.broadcast_wait * 1e9) as u64;
    let mut received;
    loop {
        received = 0;
        for (_, stdin, out) in &mut children {
            stdin.write_all(b"REPORT\n").await?;
            let line = out.next_line().await?.context("child exited")?;
            received += line
                .strip_prefix("RECEIVED ")
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(0);
        }
        if received >= connected || now_ns() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
    let released = match release {
        Some(r) => {
            // Killing the children closes all their sockets at once (the kernel does it as
            // the processes exit).
            let cpu_at_close = a.common.server_cpu();
            let closed = Instant::now();
            for (child, _, _) in &mut children {
                let _ = child.start_kill();
            }
            Some(r.wait(a, closed, cpu_at_close).await)
        }
        None => None,
    };
    report(
        a,
        Summary {
            connected,
            failed,
            connect_s,
            rss_before,
            rss_after,
            tool_rss,
            tool_rss_before: 0,
            received,
            broadcast_error,
            errors,
            released,
        },
    );
    for (mut child, stdin, _) in children {
        drop(stdin);
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        let _ = child.kill().await;
    }
    Ok(())
}
