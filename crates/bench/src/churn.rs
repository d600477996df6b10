//! `churn`: connect + subscribe + close cycles, sustained by C concurrent loops.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::stats::{self, Latency};
use crate::Common;

#[derive(Debug, Clone, Args)]
pub(crate) struct ChurnArgs {
    #[command(flatten)]
    common: Common,
    /// Concurrent connect/subscribe/close loops.
    #[arg(long, short = 'c', default_value_t = 50)]
    concurrency: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many cycles (0 = only the duration bounds the run).
    #[arg(long, default_value_t = 0)]
    cycles: u64,
    /// Channel each connection subscribes to.
    #[arg(long, default_value = "churn")]
    channel: String,
    /// Give up on one cycle after this many seconds (counted as an error).
    #[arg(long, default_value_t = 5.0)]
    cycle_timeout: f64,
}

#[derive(Default)]
struct Totals {
    cycles: u64,
    errors: Vec<(String, u64)>,
    error_count: u64,
}

pub(crate) fn run(a: &ChurnArgs) -> anyhow::Result<()> {
    crate::check_fd_limit(a.concurrency * 2 + 16)?;
    anyhow::ensure!(
        a.common.transport == crate::http::Transport::Websocket,
        "churn: only --transport websocket"
    );
    let ep = Rc::new(a.common.endpoint()?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let totals = Rc::new(RefCell::new(Totals::default()));
    let hist = Rc::new(RefCell::new(stats::histogram()));
    let cpu_before = a.common.server_cpu();
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(a.duration);
    let cycle_timeout = Duration::from_secs_f64(a.cycle_timeout);
    let limit = a.cycles;
    local.block_on(&rt, async {
        let mut tasks = Vec::new();
        for w in 0..a.concurrency.max(1) {
            let ep = ep.clone();
            let totals = totals.clone();
            let hist = hist.clone();
            let channel = a.channel.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let mut i = w;
                while Instant::now() < end && (limit == 0 || totals.borrow().cycles < limit) {
                    let started = Instant::now();
                    let r = tokio::time::timeout(cycle_timeout, async {
                        let mut ws = ep.subscriber(i, &channel).await?;
                        let us = started.elapsed().as_micros() as u64;
                        let _ = hist.borrow_mut().record(us.max(1));
                        ws.close(1000, "").await?;
                        anyhow::Ok(())
                    })
                    .await;
                    let mut t = totals.borrow_mut();
                    match r {
                        Ok(Ok(())) => t.cycles += 1,
                        Ok(Err(e)) => note(&mut t, format!("{e:#}")),
                        Err(_) => note(&mut t, "cycle timed out".into()),
                    }
                    i += 1;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = match (cpu_before, a.common.server_cpu()) {
        (Some(b), Some(e)) => Some(e - b),
        _ => None,
    };
    let t = totals.borrow();
    let lat = Latency::from_histogram(&hist.borrow());
    let rate = t.cycles as f64 / elapsed;
    eprintln!(
        "churn [{:?}{}] {} loops for {:.1}s: {} cycles ({:.0}/s), {} errors",
        a.common.target,
        if a.common.label.is_empty() {
            String::new()
        } else {
            format!(" {}", a.common.label)
        },
        a.concurrency,
        elapsed,
        t.cycles,
        rate,
        t.error_count
    );
    if !t.errors.is_empty() {
        eprintln!("  errors: {:?}", t.errors);
    }
    eprintln!(
        "  connect+subscribe ms: p50 {:.2}  p99 {:.2}  max {:.2}",
        lat.p50_ms, lat.p99_ms, lat.max_ms
    );
    if let Some(cpu) = cpu {
        eprintln!("  server CPU {:.2}s ({:.0}%)", cpu, 100.0 * cpu / elapsed);
    }
    let line = json!({
        "scenario": "churn",
        "target": a.common.target,
        "transport": a.common.transport,
        "label": a.common.label,
        "concurrency": a.concurrency,
        "duration_s": elapsed,
        "cycles": t.cycles,
        "cycles_per_sec": rate,
        "errors": t.error_count,
        "error_kinds": t.errors,
        "connect_latency": lat,
        "server_cpu_s": cpu,
        "server_rss_bytes": a.common.server_rss(),
    });
    println!("{line}");
    Ok(())
}

fn note(t: &mut Totals, e: String) {
    t.error_count += 1;
    stats::count_kind(&mut t.errors, &e);
}
