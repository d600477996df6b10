//! Multi-process `fanout`: subscribers in child processes, the publisher in the parent.
//!
//! One process holds at most its open-files limit of sockets (20,000 on the reference
//! machine), so `fanout --processes P` re-executes the tool P times as children
//! (`fanout --child`), each holding its share of the subscribers from its own source address
//! 127.0.0.(B+i), on URL i of a comma-separated `--url` list. The parent publishes and steers
//! the children over their stdin/stdout, one line each way, every [`POLL`]:
//!
//! - parent: `S LATENCY_FROM WINDOW_START WINDOW_END SKIP` (time stamps in `CLOCK_MONOTONIC`
//!   nanoseconds, shared by every process; `SKIP` = messages the publisher gave up waiting for)
//! - child: `S CONNECTED FAILED ALIVE BARRIER DELIVERED DELIVERED_WINDOW COMPLETE`, where
//!   `COMPLETE` counts the messages (from the first) every one of its subscribers received;
//!   the parent's max-rate flow control waits for the smallest.
//!
//! At the end the parent sends `F SENT`; the child stops its subscribers, checks each against
//! SENT and answers `R {json}` with its integrity totals, latency histogram and CPU time.
//! A delivery counted in the measurement window may be up to one poll late in learning that
//! the window ended (at most [`POLL`] of extra deliveries over a 10 s window).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::pool::{self, Layout, ReadyTotals, Shared, RING};
use crate::publisher::{self, PublishPlan};
use crate::stats::{self, Integrity};
use crate::{sys, Common, Outcome};

/// How often the parent exchanges status lines with every child.
const POLL: Duration = Duration::from_millis(2);

/// A child process and its two pipes.
struct ChildIo {
    process: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl ChildIo {
    async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.write_all(b"\n").await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn expect(&mut self, prefix: &str) -> anyhow::Result<String> {
        let line = self
            .stdout
            .next_line()
            .await?
            .context("subscriber process exited")?;
        line.strip_prefix(prefix)
            .map(str::to_owned)
            .with_context(|| format!("expected `{prefix}` from a subscriber process, got {line:?}"))
    }
}

/// Subscriber child: hold the subscribers, answer status polls, report at the end.
pub(crate) fn run_child(common: &Common, plan: &PublishPlan, layout: Layout) -> anyhow::Result<()> {
    crate::check_fd_limit(layout.subscribers + 1)?;
    let channels = layout.channels as u64;
    let shared = Shared::new(
        common.endpoint()?,
        None,
        layout,
        plan.rate == 0,
        common.connect_concurrency,
    );
    let timeout = Duration::from_secs(common.connect_timeout);
    let (sent, workers) = pool::run(shared, common.threads, move |shared| async move {
        shared.wait_connected(timeout, false).await;
        println!("READY {}", shared.ready_report());
        let mut complete = 0;
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut fields = line.split_ascii_whitespace();
            match fields.next() {
                Some("S") => {
                    let v: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
                    if let [latency_from, window_start, window_end, skip] = v[..] {
                        shared.latency_from_ns.store(latency_from, Relaxed);
                        shared.window_start_ns.store(window_start, Relaxed);
                        shared.window_end_ns.store(window_end, Relaxed);
                        complete = advance(&shared, complete, skip);
                    }
                    println!(
                        "S {} {} {} {} {} {} {}",
                        shared.connected.load(Relaxed),
                        shared.failed.load(Relaxed),
                        shared.alive.load(Relaxed),
                        shared.barrier.load(Relaxed),
                        shared.delivered.load(Relaxed),
                        shared.delivered_window.load(Relaxed),
                        complete
                    );
                }
                Some("F") => return fields.next().and_then(|f| f.parse().ok()).unwrap_or(0),
                _ => {}
            }
        }
        0
    })?;
    let (hist, integrity) = stats::collect(&workers, channels, sent);
    let report = json!({
        "integrity": integrity,
        "latency": stats::histogram_pairs(&hist),
        "cpu_s": sys::cpu_seconds(std::process::id()),
    });
    println!("R {report}");
    Ok(())
}

/// Moves `complete` past every message all of this process's subscribers received (and
/// past `skip`), clearing the ring slots it passes for reuse. Fixed rate: no ring, no-op.
fn advance(shared: &Shared, mut complete: u64, skip: u64) -> u64 {
    let Some(ring) = &shared.ring else {
        return complete;
    };
    let slot = |k: u64| &ring[(k % RING as u64) as usize];
    while complete < skip {
        slot(complete).store(0, Relaxed);
        complete += 1;
    }
    let need = shared.copies();
    while need > 0 && slot(complete).load(Relaxed) >= need {
        slot(complete).store(0, Relaxed);
        complete += 1;
    }
    complete
}

/// Parent: spawn the subscriber children, publish, collect.
pub(crate) fn run_parent(
    common: &Common,
    plan: &PublishPlan,
    layout: &Layout,
    processes: usize,
    t0: std::time::Instant,
) -> anyhow::Result<Outcome> {
    if layout.channels != 1 {
        bail!("--processes supports one channel (fanout)");
    }
    let urls: Vec<String> = common.urls().into_iter().map(str::to_owned).collect();
    if urls.is_empty() {
        bail!("--url is empty");
    }
    let publish_ep = match common.publish_endpoint()? {
        Some(ep) => ep,
        None => common.endpoint_at(&urls[0])?,
    };
    let shared = Shared::new(
        publish_ep,
        None,
        Layout {
            subscribers: 0,
            ..layout.clone()
        },
        false,
        1,
    );
    if plan.rate == 0 {
        shared.remote_complete.store(0, Relaxed);
    }
    let common = common.clone();
    let plan = plan.clone();
    let layout = layout.clone();
    let (outcome, _) = pool::run(shared, 1, move |shared| async move {
        parent(&shared, &common, &plan, &layout, &urls, processes, t0).await
    })?;
    outcome
}

async fn parent(
    shared: &Arc<Shared>,
    common: &Common,
    plan: &PublishPlan,
    layout: &Layout,
    urls: &[String],
    processes: usize,
    t0: std::time::Instant,
) -> anyhow::Result<Outcome> {
    let mut children = spawn_children(common, plan, layout, urls, processes)?;
    let mut ready = ReadyTotals::default();
    for child in &mut children {
        ready.add(&serde_json::from_str(&child.expect("READY ").await?)?);
    }
    let ReadyTotals {
        connected,
        failed,
        errors: connect_errors,
        ..
    } = ready;
    let connect_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "  {connected} subscribers connected over {processes} processes in {connect_secs:.1}s"
    );
    shared.connected.store(connected, Relaxed);
    shared.failed.store(failed, Relaxed);
    shared.alive.store(connected, Relaxed);

    let stop = Rc::new(Cell::new(false));
    let poller = tokio::task::spawn_local(poll_children(shared.clone(), children, stop.clone()));
    let published = publisher::run(shared, plan).await;
    stop.set(true);
    let mut children = poller.await.context("status poller")??;
    poll_once(shared, &mut children).await?;

    let mut hist = stats::histogram();
    let mut integrity = Integrity::default();
    let mut children_cpu_s = 0.0;
    for child in &mut children {
        child.send(&format!("F {}", published.sent)).await?;
    }
    for child in &mut children {
        let report: serde_json::Value = serde_json::from_str(&child.expect("R ").await?)?;
        integrity.merge(&serde_json::from_value(report["integrity"].clone())?);
        let pairs: Vec<(u64, u64)> = serde_json::from_value(report["latency"].clone())?;
        stats::add_pairs(&mut hist, &pairs);
        children_cpu_s += report["cpu_s"].as_f64().unwrap_or(0.0);
    }
    for mut child in children {
        drop(child.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(10), child.process.wait()).await;
        let _ = child.process.kill().await;
    }
    Ok(Outcome {
        published,
        hist,
        integrity,
        delivered: shared.delivered.load(Relaxed),
        delivered_window: shared.delivered_window.load(Relaxed),
        connected,
        failed,
        connect_errors,
        connect_secs,
        children_cpu_s,
    })
}

fn spawn_children(
    common: &Common,
    plan: &PublishPlan,
    layout: &Layout,
    urls: &[String],
    processes: usize,
) -> anyhow::Result<Vec<ChildIo>> {
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let mut children = Vec::with_capacity(processes);
    for i in 0..processes {
        let mut cmd = common.child_command(
            "fanout",
            "--subscribers",
            layout.subscribers,
            &layout.channel_prefix,
            &urls,
            i,
            processes,
        )?;
        cmd.args(["--rate", &plan.rate.to_string()]);
        let mut process = cmd.spawn().context("spawn subscriber process")?;
        let stdin = process.stdin.take().context("child stdin")?;
        let stdout = BufReader::new(process.stdout.take().context("child stdout")?).lines();
        children.push(ChildIo {
            process,
            stdin,
            stdout,
        });
    }
    Ok(children)
}

/// Polls the children every [`POLL`] until `stop`; hands them back.
async fn poll_children(
    shared: Arc<Shared>,
    mut children: Vec<ChildIo>,
    stop: Rc<Cell<bool>>,
) -> anyhow::Result<Vec<ChildIo>> {
    while !stop.get() {
        poll_once(&shared, &mut children).await?;
        tokio::time::sleep(POLL).await;
    }
    Ok(children)
}

/// One status exchange with every child; the sums go into `shared` for the publisher.
async fn poll_once(shared: &Shared, children: &mut [ChildIo]) -> anyhow::Result<()> {
    let request = format!(
        "S {} {} {} {}",
        shared.latency_from_ns.load(Relaxed),
        shared.window_start_ns.load(Relaxed),
        shared.window_end_ns.load(Relaxed),
        shared.remote_skip.load(Relaxed)
    );
    for child in children.iter_mut() {
        child.send(&request).await?;
    }
    let mut sums = [0u64; 6];
    let mut complete = u64::MAX;
    for child in children.iter_mut() {
        let reply = child.expect("S ").await?;
        let v: Vec<u64> = reply
            .split_ascii_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        let [c, f, a, b, d, w, k] = v[..] else {
            bail!("malformed status line from a subscriber process: {reply:?}");
        };
        for (sum, x) in sums.iter_mut().zip([c, f, a, b, d, w]) {
            *sum += x;
        }
        complete = complete.min(k);
    }
    let [connected, failed, alive, barrier, delivered, delivered_window] = sums;
    shared.connected.store(connected as usize, Relaxed);
    shared.failed.store(failed as usize, Relaxed);
    shared.alive.store(alive as usize, Relaxed);
    shared.barrier.store(barrier as usize, Relaxed);
    shared.delivered.store(delivered, Relaxed);
    shared.delivered_window.store(delivered_window, Relaxed);
    if shared.remote_complete.load(Relaxed) != u64::MAX {
        let complete = complete.max(shared.remote_skip.load(Relaxed));
        if shared.remote_complete.fetch_max(complete, Relaxed) < complete {
            shared.progress.notify_one();
        }
    }
    Ok(())
}
