//! The publisher: start barrier, fixed-rate or max-rate (flow-controlled) publishing, drain.

use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use anyhow::Context as _;
use switchboard_ws::Message;

use crate::conn::{self, Scan, Target, Ws};
use crate::pool::{Shared, RING};
use crate::sys::now_ns;

/// How to publish.
#[derive(Debug, Clone)]
pub(crate) struct PublishPlan {
    /// Messages per second in total; 0 = as fast as the slowest subscriber allows.
    pub(crate) rate: u64,
    /// Max rate: how many messages the publisher may be ahead of the slowest subscriber.
    pub(crate) window: u64,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    /// Stop after this many messages (0 = no limit).
    pub(crate) max_messages: u64,
    pub(crate) payload: usize,
    /// How long to wait for in-flight deliveries after the last message.
    pub(crate) drain: Duration,
}

/// What the publisher did.
#[derive(Debug, Default, Clone)]
pub(crate) struct Published {
    /// Numbered messages sent (1..=sent).
    pub(crate) sent: u64,
    /// Messages sent inside the measurement window.
    pub(crate) sent_window: u64,
    pub(crate) window_secs: f64,
    pub(crate) errors: u64,
    pub(crate) barrier_ok: bool,
    pub(crate) failure: Option<String>,
}

/// Connects the publisher, waits for every subscriber to see the barrier, publishes, drains.
pub(crate) async fn run(shared: &Shared, plan: &PublishPlan) -> Published {
    let mut out = Published::default();
    match run_inner(shared, plan, &mut out).await {
        Ok(()) => {}
        Err(e) => out.failure = Some(format!("{e:#}")),
    }
    out
}

async fn run_inner(shared: &Shared, plan: &PublishPlan, out: &mut Published) -> anyhow::Result<()> {
    let ep = shared.publish_endpoint.as_ref().unwrap_or(&shared.endpoint);
    let channels = shared.layout.channels as u64;
    let names: Vec<String> = (0..shared.layout.channels)
        .map(|c| shared.layout.channel_name(c))
        .collect();
    let mut ws = ep.publisher().await.context("publisher connect")?;
    let mut id: u32 = 1;
    let mut buf = Vec::with_capacity(plan.payload + 64);

    // Start barrier: message 0 on every channel until every subscriber has seen it.
    out.barrier_ok = barrier(
        shared,
        &mut ws,
        &names,
        &mut id,
        plan.payload,
        Duration::from_secs(15),
    )
    .await?;
    if !out.barrier_ok {
        eprintln!(
            "  warning: only {} of {} subscribers saw the start barrier",
            shared.barrier.load(Relaxed),
            shared.alive.load(Relaxed)
        );
    }

    let start = now_ns();
    let warm = start + plan.warmup.as_nanos() as u64;
    let end = warm + plan.duration.as_nanos() as u64;
    shared.latency_from_ns.store(warm, Relaxed);
    shared.window_start_ns.store(warm, Relaxed);
    let mut sent: u64 = 0;
    let mut sent_at_warm = None;
    let window = plan.window.clamp(1, RING as u64 / 2);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sc = Scan::default();
    loop {
        out.errors += drain_replies(&mut ws, ep.target, &mut sc)?;
        let now = now_ns();
        if sent_at_warm.is_none() && now >= warm {
            sent_at_warm = Some(sent);
        }
        if now >= end || (plan.max_messages > 0 && sent >= plan.max_messages) {
            break;
        }
        let room = if plan.max_messages > 0 {
            plan.max_messages - sent
        } else {
            u64::MAX
        };
        let n = if plan.rate > 0 {
            let due = (u128::from(plan.rate) * u128::from(now - start) / 1_000_000_000) as u64;
            due.saturating_sub(sent).min(room)
        } else {
            allowed(shared, sent, window).min(room).min(64)
        };
        if n == 0 {
            if plan.rate > 0 {
                tokio::select! {
                    _ = tick.tick() => {}
                    r = ws.recv() => { r?; }
                }
            } else {
                tokio::select! {
                    _ = shared.progress.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {
                        // A slot that stays short (a subscriber died or lost it): move on.
                        skip_slot(shared, sent, window);
                    }
                }
            }
            continue;
        }
        for _ in 0..n {
            sent += 1;
            let k = sent - 1;
            let c = (k % channels) as usize;
            let seq = k / channels + 1;
            if let Some(ring) = &shared.ring {
                ring[(k % RING as u64) as usize].store(0, Relaxed);
            }
            buf.clear();
            conn::payload(seq, now_ns(), plan.payload, &mut buf);
            ws.queue_message(&Message::Text(conn::publish_frame(
                ep.target, id, &names[c], &buf,
            )));
            id = id.wrapping_add(1).max(1);
        }
        ws.flush().await?;
    }
    let stopped = now_ns();
    shared.window_end_ns.store(stopped, Relaxed);
    out.sent = sent;
    out.sent_window = sent - sent_at_warm.unwrap_or(sent);
    out.window_secs = stopped.saturating_sub(warm) as f64 / 1e9;

    // Drain: until every live subscriber has every message, or the drain time is up.
    let deadline = now_ns() + plan.drain.as_nanos() as u64;
    let per_channel = shared.layout.per_channel() as u64;
    loop {
        out.errors += drain_replies(&mut ws, ep.target, &mut sc)?;
        let expected = if channels == 1 {
            sent * shared.alive.load(Relaxed) as u64
        } else {
            sent * per_channel
        };
        if shared.delivered.load(Relaxed) >= expected || now_ns() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = ws.close(1000, "").await;
    Ok(())
}

/// Max rate: how many more messages may go out now.
fn allowed(shared: &Shared, sent: u64, window: u64) -> u64 {
    let remote = shared.remote_complete.load(Relaxed);
    if remote != u64::MAX {
        // Message index `sent + n` may go once `sent + n - window` is complete.
        return (remote + window).saturating_sub(sent).min(64);
    }
    let Some(ring) = &shared.ring else {
        return 64;
    };
    let need = shared.copies();
    let mut n = 0;
    // Message index `sent + n` (0-based) may go once index `sent + n - window` is complete.
    while n < 64 {
        let k = sent + n;
        if k >= window {
            let old = k - window;
            if ring[(old % RING as u64) as usize].load(Relaxed) < need {
                break;
            }
        }
        n += 1;
    }
    n
}

/// Marks the oldest in-flight slot complete, so one stuck message cannot stall the run.
fn skip_slot(shared: &Shared, sent: u64, window: u64) {
    if shared.remote_complete.load(Relaxed) != u64::MAX {
        if sent >= window {
            shared.remote_skip.fetch_max(sent - window + 1, Relaxed);
            shared.remote_complete.fetch_max(sent - window + 1, Relaxed);
        }
        return;
    }
    if let (Some(ring), true) = (&shared.ring, sent >= window) {
        ring[((sent - window) % RING as u64) as usize].store(u32::MAX, Relaxed);
    }
}

/// Sends the barrier (message 0) to every channel until every live subscriber saw it.
async fn barrier(
    shared: &Shared,
    ws: &mut Ws,
    names: &[String],
    id: &mut u32,
    size: usize,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let target = shared.endpoint.target;
    let deadline = now_ns() + timeout.as_nanos() as u64;
    let mut buf = Vec::new();
    let mut sc = Scan::default();
    loop {
        for name in names {
            buf.clear();
            conn::payload(0, now_ns(), size, &mut buf);
            ws.queue_message(&Message::Text(conn::publish_frame(target, *id, name, &buf)));
            *id += 1;
        }
        ws.flush().await?;
        let resend = now_ns() + 500_000_000;
        while now_ns() < resend {
            drain_replies(ws, target, &mut sc)?;
            if shared.barrier.load(Relaxed) >= shared.alive.load(Relaxed) {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if now_ns() >= deadline {
            return Ok(false);
        }
    }
}

/// Reads whatever the publisher connection has without waiting; answers pings. Returns the
/// number of error replies seen.
pub(crate) fn drain_replies(ws: &mut Ws, target: Target, sc: &mut Scan) -> anyhow::Result<u64> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut errors = 0;
    let mut batch = Vec::new();
    loop {
        batch.clear();
        match ws.poll_read_messages(&mut cx, &mut batch) {
            Poll::Pending => break,
            Poll::Ready(Err(e)) => return Err(e).context("publisher connection"),
            Poll::Ready(Ok(())) => {}
        }
        for m in &batch {
            match m {
                Message::Text(t) => {
                    *sc = Scan::default();
                    conn::scan(target, t, sc, |_| {});
                    if sc.error {
                        errors += 1;
                    }
                    if sc.ping {
                        ws.queue_message(&conn::pong(target));
                    }
                }
                Message::Close(c) => anyhow::bail!("publisher connection closed: {c:?}"),
                _ => {}
            }
        }
    }
    Ok(errors)
}
