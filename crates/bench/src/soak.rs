//! `soak`: many subscribed connections held for a long time while some of them keep
//! reconnecting and a publisher keeps publishing; the server's memory and error counters are
//! sampled throughout, so a leak or a slow failure shows as a trend.
//!
//! - **Holders**: `-n` slots, slot `i` subscribed to channel `PREFIX-(i mod --channels)`. Each
//!   connection lives a random time of mean `n / --churn` seconds (the first lifetimes are
//!   spread evenly below the mean, so churn starts at once), is closed with code 1000 and its
//!   slot connects again: about `--churn` reconnects per second in all.
//! - **Publisher**: one connection publishing `--rate` publications per second, round-robin
//!   over the channels; every publication carries its channel's own sequence number.
//! - **Checks** per connection lifetime: after its first publication, each next one of the
//!   channel must follow by exactly one (else counted as lost or as duplicated/reordered).
//!   Connect failures, connections the server closed, and publish errors are counted by kind.
//! - **Samples** every `--sample` seconds: server RSS and CPU, held connections, counters, and
//!   the server's own `switchboard_errors_total` and `switchboard_disconnects_total` (from
//!   `GET /metrics`). After `--warmup` seconds the RSS trend is fitted (least squares), and the
//!   growth from the warm-up sample to the end is reported.
//!
//! Like every scenario: bounded in time, one JSON line on stdout, a summary on stderr.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde_json::json;
use switchboard_ws::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::conn::{self, Endpoint, Scan, Ws};
use crate::stats;
use crate::sys::{self, now_ns};
use crate::Common;

#[derive(Debug, Clone, Args)]
pub(crate) struct SoakArgs {
    #[command(flatten)]
    common: Common,
    /// Connections held (slots); each is subscribed to one channel.
    #[arg(long, short = 'n', default_value_t = 18_000)]
    connections: usize,
    /// Channels the connections are spread over.
    #[arg(long, default_value_t = 180)]
    channels: usize,
    /// Channel name prefix (channels are PREFIX-0, PREFIX-1, ...).
    #[arg(long, default_value = "soak")]
    channel_prefix: String,
    /// Reconnects per second, on average, over all slots (0 = connections live all run).
    #[arg(long, default_value_t = 100.0)]
    churn: f64,
    /// Publications per second, all channels together.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 1800.0)]
    duration: f64,
    /// Seconds after which the memory is taken as warmed up (the trend starts there).
    #[arg(long, default_value_t = 300.0)]
    warmup: f64,
    /// Seconds between two samples.
    #[arg(long, default_value_t = 10.0)]
    sample: f64,
    /// Give up on one connect + subscribe after this many seconds (counted as an error).
    #[arg(long, default_value_t = 10.0)]
    cycle_timeout: f64,
}

/// Counters shared by every task of the run (one thread, so plain cells).
#[derive(Default)]
struct Counters {
    held: Cell<u64>,
    connects: Cell<u64>,
    closes: Cell<u64>,
    deliveries: Cell<u64>,
    lost: Cell<u64>,
    out_of_order: Cell<u64>,
    published: Cell<u64>,
    acknowledged: Cell<u64>,
    connect_errors: RefCell<Vec<(String, u64)>>,
    server_closed: RefCell<Vec<(String, u64)>>,
    publish_errors: RefCell<Vec<(String, u64)>>,
}

impl Counters {
    fn bump(c: &Cell<u64>, n: u64) {
        c.set(c.get() + n);
    }

    fn total(kinds: &RefCell<Vec<(String, u64)>>) -> u64 {
        kinds.borrow().iter().map(|(_, n)| n).sum()
    }
}

/// What the server's `/metrics` said at one moment.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct ServerCounters {
    errors_total: f64,
    /// `switchboard_disconnects_total` per `code`.
    disconnects: BTreeMap<String, f64>,
    connections: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Sample {
    t_s: f64,
    server_rss_bytes: Option<u64>,
    server_cpu_s: Option<f64>,
    tool_rss_bytes: Option<u64>,
    held: u64,
    connects: u64,
    closes: u64,
    deliveries: u64,
    lost: u64,
    out_of_order: u64,
    acknowledged: u64,
    connect_errors: u64,
    server_closed: u64,
    publish_errors: u64,
    server: Option<ServerCounters>,
}

pub(crate) fn run(a: &SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.channels > 0, "--channels must be at least 1");
    anyhow::ensure!(a.sample > 0.0, "--sample must be positive");
    crate::check_fd_limit(a.connections + 8)?;
    anyhow::ensure!(
        a.common.transport == crate::http::Transport::Websocket,
        "soak: only --transport websocket"
    );
    let ep = Rc::new(a.common.endpoint()?);
    let metrics_addr = ep.addr;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let counters = Rc::new(Counters::default());
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(a.duration);
    let samples = local.block_on(&rt, async {
        let next_index = Rc::new(Cell::new(0usize));
        let handshakes = Rc::new(tokio::sync::Semaphore::new(
            a.common.connect_concurrency.max(1),
        ));
        let mut tasks = Vec::new();
        for slot in 0..a.connections {
            tasks.push(tokio::task::spawn_local(hold_slot(
                a.clone(),
                ep.clone(),
                counters.clone(),
                next_index.clone(),
                handshakes.clone(),
                slot,
                end,
            )));
        }
        tasks.push(tokio::task::spawn_local(publish(
            a.clone(),
            ep.clone(),
            counters.clone(),
            end,
        )));
        let samples = sample_until(a, &counters, metrics_addr, t0, end).await;
        for t in tasks {
            let _ = t.await;
        }
        samples
    });
    report(a, &counters, &samples, t0.elapsed().as_secs_f64())
}

/// One slot: connect + subscribe, hold for a random lifetime while checking what arrives,
/// close, again, until `end`.
async fn hold_slot(
    a: SoakArgs,
    ep: Rc<Endpoint>,
    c: Rc<Counters>,
    next_index: Rc<Cell<usize>>,
    handshakes: Rc<tokio::sync::Semaphore>,
    slot: usize,
    end: Instant,
) {
    let channel = format!("{}-{}", a.channel_prefix, slot % a.channels);
    let mut rng = XorShift::new(slot as u64 + 1);
    let mean_life = if a.churn > 0.0 {
        a.connections as f64 / a.churn
    } else {
        f64::INFINITY
    };
    let mut first = true;
    let cycle_timeout = Duration::from_secs_f64(a.cycle_timeout);
    while Instant::now() < end {
        let index = next_index.get();
        next_index.set(index + 1);
        // At most --connect-concurrency handshakes at once, as a fleet of clients with
        // jittered reconnects would arrive.
        let permit = handshakes.acquire().await;
        let ws = tokio::time::timeout(cycle_timeout, ep.subscriber(index, &channel)).await;
        drop(permit);
        let mut ws = match ws {
            Ok(Ok(ws)) => ws,
            failed => {
                let kind = match failed {
                    Ok(Err(e)) => format!("{e:#}"),
                    _ => "connect + subscribe timed out".to_owned(),
                };
                stats::count_kind(&mut c.connect_errors.borrow_mut(), &kind);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        Counters::bump(&c.connects, 1);
        Counters::bump(&c.held, 1);
        // Uniform over [0, mean] the first time, so that `--churn` reconnects per second
        // start at once, then over [0.5, 1.5] * mean.
        let life = if first {
            mean_life * rng.unit()
        } else {
            mean_life * (0.5 + rng.unit())
        };
        first = false;
        let until = if life.is_finite() {
            (Instant::now() + Duration::from_secs_f64(life)).min(end)
        } else {
            end
        };
        let closed_by_us = hold(&mut ws, &c, until).await;
        c.held.set(c.held.get() - 1);
        if closed_by_us {
            let _ = ws.close(1000, "").await;
            Counters::bump(&c.closes, 1);
        }
    }
}

/// Reads until `until`; true when the time ran out (we close), false when the server closed
/// the connection or it failed (counted).
async fn hold(ws: &mut Ws, c: &Counters, until: Instant) -> bool {
    let deadline = tokio::time::sleep_until(until.into());
    tokio::pin!(deadline);
    let mut last_seq: Option<u64> = None;
    let mut scan = Scan::default();
    loop {
        tokio::select! {
            _ = &mut deadline => return true,
            m = ws.recv() => match m {
                Ok(Some(Message::Text(t))) => {
                    scan.ping = false;
                    conn::scan(conn::Target::Switchboard, &t, &mut scan, |st| {
                        Counters::bump(&c.deliveries, 1);
                        match last_seq {
                            Some(l) if st.seq == l + 1 => {}
                            Some(l) if st.seq > l + 1 => Counters::bump(&c.lost, st.seq - l - 1),
                            Some(_) => Counters::bump(&c.out_of_order, 1),
                            None => {}
                        }
                        last_seq = Some(last_seq.map_or(st.seq, |l| l.max(st.seq)));
                    });
                    if scan.ping && ws.send(conn::pong(conn::Target::Switchboard)).await.is_err() {
                        stats::count_kind(&mut c.server_closed.borrow_mut(), "pong write failed");
                        return false;
                    }
                }
                Ok(Some(Message::Close(frame))) => {
                    let kind = format!("close {:?}", frame.map(|f| f.code));
                    stats::count_kind(&mut c.server_closed.borrow_mut(), &kind);
                    return false;
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    stats::count_kind(&mut c.server_closed.borrow_mut(), "closed without a close frame");
                    return false;
                }
                Err(e) => {
                    stats::count_kind(&mut c.server_closed.borrow_mut(), &format!("{e}"));
                    return false;
                }
            }
        }
    }
}

/// The publisher: `--rate` publications per second round-robin over the channels, each with
/// its channel's next sequence number; replies counted; reconnects when its connection drops.
async fn publish(a: SoakArgs, ep: Rc<Endpoint>, c: Rc<Counters>, end: Instant) {
    if a.rate <= 0.0 {
        return;
    }
    let mut seqs = vec![0u64; a.channels];
    let mut next_channel = 0usize;
    let mut id = 0u32;
    let mut payload = Vec::with_capacity(a.size + 32);
    let period = Duration::from_secs_f64(1.0 / a.rate);
    while Instant::now() < end {
        let mut ws = match ep.publisher().await {
            Ok(ws) => ws,
            Err(e) => {
                stats::count_kind(
                    &mut c.publish_errors.borrow_mut(),
                    &format!("publisher connect: {e:#}"),
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = tokio::time::sleep_until(end.into());
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => {
                    let _ = ws.close(1000, "").await;
                    return;
                }
                _ = tick.tick() => {
                    let ch = next_channel;
                    next_channel = (next_channel + 1) % a.channels;
                    seqs[ch] += 1;
                    payload.clear();
                    conn::payload(seqs[ch], now_ns(), a.size, &mut payload);
                    id = id.wrapping_add(1).max(2);
                    let channel = format!("{}-{}", a.channel_prefix, ch);
                    let frame = conn::publish_frame(conn::Target::Switchboard, id, &channel, &payload);
                    Counters::bump(&c.published, 1);
                    if let Err(e) = ws.send(Message::Text(frame)).await {
                        stats::count_kind(&mut c.publish_errors.borrow_mut(), &format!("send: {e}"));
                        break;
                    }
                }
                m = ws.recv() => match m {
                    Ok(Some(Message::Text(t))) => {
                        for line in t.split(|&b| b == b'\n') {
                            if line == b"{}" {
                                let _ = ws.send(conn::pong(conn::Target::Switchboard)).await;
                            } else if line.starts_with(b"{\"id\":") {
                                let mut scan = Scan::default();
                                conn::scan(conn::Target::Switchboard, line, &mut scan, |_| {});
                                if scan.error {
                                    let text = String::from_utf8_lossy(line);
                                    stats::count_kind(&mut c.publish_errors.borrow_mut(), &text);
                                } else {
                                    Counters::bump(&c.acknowledged, 1);
                                }
                            }
                        }
                    }
                    Ok(Some(Message::Close(f))) => {
                        let kind = format!("publisher closed by the server: {:?}", f.map(|f| f.code));
                        stats::count_kind(&mut c.publish_errors.borrow_mut(), &kind);
                        break;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        stats::count_kind(&mut c.publish_errors.borrow_mut(), "publisher connection lost");
                        break;
                    }
                }
            }
        }
    }
}

/// Takes a sample every `--sample` seconds until `end`, printing a progress line for each.
async fn sample_until(
    a: &SoakArgs,
    c: &Counters,
    metrics_addr: std::net::SocketAddr,
    t0: Instant,
    end: Instant,
) -> Vec<Sample> {
    let period = Duration::from_secs_f64(a.sample);
    let mut out = Vec::new();
    let mut at = t0 + period;
    loop {
        let at_end = at >= end;
        tokio::time::sleep_until(at.min(end).into()).await;
        let server = tokio::time::timeout(Duration::from_secs(5), server_counters(metrics_addr))
            .await
            .ok()
            .and_then(Result::ok);
        let s = Sample {
            t_s: t0.elapsed().as_secs_f64(),
            server_rss_bytes: a.common.server_rss(),
            server_cpu_s: a.common.server_cpu(),
            tool_rss_bytes: sys::self_rss_bytes(),
            held: c.held.get(),
            connects: c.connects.get(),
            closes: c.closes.get(),
            deliveries: c.deliveries.get(),
            lost: c.lost.get(),
            out_of_order: c.out_of_order.get(),
            acknowledged: c.acknowledged.get(),
            connect_errors: Counters::total(&c.connect_errors),
            server_closed: Counters::total(&c.server_closed),
            publish_errors: Counters::total(&c.publish_errors),
            server,
        };
        eprintln!(
            "soak t={:>6.0}s held {:>6} connects {:>8} deliveries {:>10} rss {} errors: connect {} closed-by-server {} publish {} lost {} out-of-order {} server-errors {}",
            s.t_s,
            s.held,
            s.connects,
            s.deliveries,
            s.server_rss_bytes
                .map_or("-".to_owned(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
            s.connect_errors,
            s.server_closed,
            s.publish_errors,
            s.lost,
            s.out_of_order,
            s.server.as_ref().map_or("-".to_owned(), |m| format!("{}", m.errors_total)),
        );
        out.push(s);
        if at_end {
            return out;
        }
        at += period;
    }
}

/// `GET /metrics` of the node (one short-lived HTTP/1.1 request): its error total,
/// disconnects per code and connection gauge.
async fn server_counters(addr: std::net::SocketAddr) -> anyhow::Result<ServerCounters> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).await?;
    let text = String::from_utf8_lossy(&body);
    let (head, text) = text
        .split_once("\r\n\r\n")
        .context("metrics: no header end")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "metrics: {}",
        head.lines().next().unwrap_or("")
    );
    Ok(parse_metrics(text))
}

fn parse_metrics(text: &str) -> ServerCounters {
    let mut out = ServerCounters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if name.starts_with("switchboard_errors_total") {
            out.errors_total += value;
        } else if let Some(labels) = name.strip_prefix("switchboard_disconnects_total{") {
            let code = labels
                .split(',')
                .find_map(|l| l.strip_prefix("code=\""))
                .and_then(|l| l.split('"').next())
                .unwrap_or("?");
            *out.disconnects.entry(code.to_owned()).or_default() += value;
        } else if name == "switchboard_connections" {
            out.connections = value;
        }
    }
    out
}

/// Least-squares slope of (t seconds, bytes) in bytes per minute.
fn slope_per_minute(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let var: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    if var == 0.0 {
        return None;
    }
    let cov: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - my)).sum();
    Some(cov / var * 60.0)
}

fn report(a: &SoakArgs, c: &Counters, samples: &[Sample], elapsed: f64) -> anyhow::Result<()> {
    let warm: Vec<&Sample> = samples.iter().filter(|s| s.t_s >= a.warmup).collect();
    let rss_points: Vec<(f64, f64)> = warm
        .iter()
        .filter_map(|s| Some((s.t_s, s.server_rss_bytes? as f64)))
        .collect();
    let rss_at_warmup = rss_points.first().map(|p| p.1);
    let rss_end = rss_points.last().map(|p| p.1);
    let rss_max = rss_points
        .iter()
        .map(|p| p.1)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let growth_pct = match (rss_at_warmup, rss_end) {
        (Some(w), Some(e)) if w > 0.0 => Some(100.0 * (e - w) / w),
        _ => None,
    };
    let slope = slope_per_minute(&rss_points);
    let server_errors_after_warmup = match (warm.first(), warm.last()) {
        (Some(f), Some(l)) => match (&f.server, &l.server) {
            (Some(f), Some(l)) => Some(l.errors_total - f.errors_total),
            _ => None,
        },
        _ => None,
    };
    let server_final = samples.last().and_then(|s| s.server.clone());
    let mib = |b: Option<f64>| b.map_or("-".to_owned(), |b| format!("{:.1} MiB", b / 1048576.0));
    eprintln!(
        "soak [{}] {} connections on {} channels, churn {}/s, {} publications/s, {:.0} s:",
        a.common.label, a.connections, a.channels, a.churn, a.rate, elapsed
    );
    eprintln!(
        "  connects {} ({:.1}/s), closes {}, deliveries {}, published {} acknowledged {}",
        c.connects.get(),
        c.connects.get() as f64 / elapsed,
        c.closes.get(),
        c.deliveries.get(),
        c.published.get(),
        c.acknowledged.get()
    );
    eprintln!(
        "  server RSS after warm-up {} -> end {} (max {}), growth {}, trend {}",
        mib(rss_at_warmup),
        mib(rss_end),
        mib(rss_max),
        growth_pct.map_or("-".to_owned(), |g| format!("{g:+.1}%")),
        slope.map_or("-".to_owned(), |s| format!("{:+.1} KiB/min", s / 1024.0)),
    );
    eprintln!(
        "  lost {} out-of-order {}; errors: connect {:?} closed-by-server {:?} publish {:?}; server errors_total after warm-up {}",
        c.lost.get(),
        c.out_of_order.get(),
        c.connect_errors.borrow(),
        c.server_closed.borrow(),
        c.publish_errors.borrow(),
        server_errors_after_warmup.map_or("-".to_owned(), |e| format!("{e}")),
    );
    let line = json!({
        "scenario": "soak",
        "target": a.common.target,
        "transport": a.common.transport,
        "label": a.common.label,
        "connections": a.connections,
        "channels": a.channels,
        "churn_per_sec": a.churn,
        "rate": a.rate,
        "size": a.size,
        "duration_s": elapsed,
        "warmup_s": a.warmup,
        "connects": c.connects.get(),
        "closes": c.closes.get(),
        "deliveries": c.deliveries.get(),
        "published": c.published.get(),
        "acknowledged": c.acknowledged.get(),
        "lost": c.lost.get(),
        "out_of_order": c.out_of_order.get(),
        "connect_errors": *c.connect_errors.borrow(),
        "server_closed": *c.server_closed.borrow(),
        "publish_errors": *c.publish_errors.borrow(),
        "server_rss_at_warmup_bytes": rss_at_warmup,
        "server_rss_end_bytes": rss_end,
        "server_rss_max_bytes": rss_max,
        "server_rss_growth_pct": growth_pct,
        "server_rss_trend_bytes_per_min": slope,
        "server_errors_after_warmup": server_errors_after_warmup,
        "server_final": server_final,
        "samples": samples,
    });
    println!("{line}");
    Ok(())
}

/// A small deterministic generator for connection lifetimes (xorshift64*).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_per_family() {
        let text =
            "# HELP x\nswitchboard_errors_total{code=\"103\",message=\"permission denied\"} 2\n\
                    switchboard_errors_total{code=\"109\",message=\"token expired\"} 3\n\
                    switchboard_disconnects_total{code=\"3008\",reason=\"slow\"} 1\n\
                    switchboard_disconnects_total{code=\"3008\",reason=\"other\"} 1\n\
                    switchboard_connections 17\n";
        let m = parse_metrics(text);
        assert_eq!(m.errors_total, 5.0);
        assert_eq!(m.disconnects.get("3008"), Some(&2.0));
        assert_eq!(m.connections, 17.0);
    }

    #[test]
    fn slope_of_a_line_is_its_rate_per_minute() {
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64 * 10.0, 1000.0 + i as f64 * 5.0))
            .collect();
        let s = slope_per_minute(&pts).unwrap();
        assert!((s - 30.0).abs() < 1e-9, "{s}");
        assert_eq!(slope_per_minute(&pts[..1]), None);
    }

    #[test]
    fn lifetimes_are_uniform_enough() {
        let mut r = XorShift::new(7);
        let v: Vec<f64> = (0..10_000).map(|_| r.unit()).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }
}
