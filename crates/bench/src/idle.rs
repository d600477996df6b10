//! `idle`: hold N subscribed connections, measure memory, check one broadcast reaches all.
//!
//! One process holds at most its open-files limit of sockets (20,000 on the reference
//! machine). With `--processes P` the tool re-executes itself P times as children
//! (`idle --child`), each holding N/P connections from its own source address 127.0.0.(B+i);
//! the parent only publishes and sums. Children talk to the parent over stdin/stdout lines:
//! `READY {json}` when connected, `RECEIVED n` when asked with `REPORT`; they exit when their
//! stdin closes.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::json;
use switchboard_ws::Message;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::conn;
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
        (connect_s, rss, tool_rss, received)
    })?;
    let (connect_s, rss_after, tool_rss, received) = out;
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
    let line = json!({
        "scenario": "idle",
        "target": a.common.target,
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
        },
    );
    for (mut child, stdin, _) in children {
        drop(stdin);
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        let _ = child.kill().await;
    }
    Ok(())
}
