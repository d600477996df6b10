//! The subscriber pool: worker threads, each a current-thread runtime holding a share of the
//! subscriber connections, plus the state they share with the publisher.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use hdrhistogram::Histogram;
use switchboard_ws::Message;
use tokio::sync::{watch, Notify, Semaphore};

use crate::conn::{self, Endpoint, Scan, Stamp, Sub, Ws};
use crate::http::HttpSub;
use crate::stats::{self, SubStats};
use crate::sys::now_ns;

/// Slots of the in-flight ring used by max-rate publishing; must exceed the window.
pub(crate) const RING: usize = 1 << 16;

/// How subscribers are laid out.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) subscribers: usize,
    /// Subscriber `i` joins channel `i % channels`.
    pub(crate) channels: usize,
    pub(crate) channel_prefix: String,
}

impl Layout {
    pub(crate) fn channel_name(&self, c: usize) -> String {
        if self.channels == 1 {
            self.channel_prefix.clone()
        } else {
            format!("{}{c}", self.channel_prefix)
        }
    }
    pub(crate) fn per_channel(&self) -> usize {
        self.subscribers / self.channels
    }
}

/// State shared by the workers and the coordinator (publisher).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) endpoint: Endpoint,
    /// Where the publisher connects, when not `endpoint` (another node of a cluster).
    pub(crate) publish_endpoint: Option<Endpoint>,
    pub(crate) layout: Layout,
    pub(crate) connected: AtomicUsize,
    pub(crate) failed: AtomicUsize,
    pub(crate) alive: AtomicUsize,
    /// Subscribers that saw the start barrier (sequence number 0).
    pub(crate) barrier: AtomicUsize,
    /// Deliveries of numbered messages.
    pub(crate) delivered: AtomicU64,
    /// Deliveries received inside the measurement window.
    pub(crate) delivered_window: AtomicU64,
    pub(crate) window_start_ns: AtomicU64,
    pub(crate) window_end_ns: AtomicU64,
    /// Latency is recorded for messages sent at or after this time.
    pub(crate) latency_from_ns: AtomicU64,
    /// Max-rate flow control: copies received per message slot.
    pub(crate) ring: Option<Vec<AtomicU32>>,
    /// Woken when a ring slot completes.
    pub(crate) progress: Notify,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) connect_errors: Mutex<Vec<(String, u64)>>,
    pub(crate) pongs: AtomicBool,
    /// Multi-process max rate: messages (counted from the first) that every subscriber
    /// process reports complete; `u64::MAX` while the subscribers are in this process.
    pub(crate) remote_complete: AtomicU64,
    /// Multi-process max rate: messages before this one count as complete (stuck ones
    /// skipped by the publisher).
    pub(crate) remote_skip: AtomicU64,
    concurrency: usize,
}

impl Shared {
    pub(crate) fn new(
        endpoint: Endpoint,
        publish_endpoint: Option<Endpoint>,
        layout: Layout,
        flow_control: bool,
        concurrency: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            endpoint,
            publish_endpoint,
            layout,
            connected: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            alive: AtomicUsize::new(0),
            barrier: AtomicUsize::new(0),
            delivered: AtomicU64::new(0),
            delivered_window: AtomicU64::new(0),
            window_start_ns: AtomicU64::new(u64::MAX),
            window_end_ns: AtomicU64::new(u64::MAX),
            latency_from_ns: AtomicU64::new(u64::MAX),
            ring: flow_control.then(|| (0..RING).map(|_| AtomicU32::new(0)).collect()),
            progress: Notify::new(),
            stop: watch::channel(false).0,
            connect_errors: Mutex::new(Vec::new()),
            pongs: AtomicBool::new(true),
            remote_complete: AtomicU64::new(u64::MAX),
            remote_skip: AtomicU64::new(0),
            concurrency: concurrency.max(1),
        })
    }

    /// Copies of one message that make its ring slot complete.
    pub(crate) fn copies(&self) -> u32 {
        if self.layout.channels == 1 {
            self.alive.load(Relaxed) as u32
        } else {
            self.layout.per_channel() as u32
        }
    }

    fn connect_error(&self, e: &anyhow::Error) {
        let text = format!("{e:#}");
        let mut errs = self
            .connect_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        stats::count_kind(&mut errs, &text);
    }

    /// What a child process prints once its connections are up: `READY {json}` with the
    /// connected and failed counts, the connect errors by kind and the child's RSS.
    pub(crate) fn ready_report(&self) -> serde_json::Value {
        let errors = self
            .connect_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        serde_json::json!({
            "connected": self.connected.load(Relaxed),
            "failed": self.failed.load(Relaxed),
            "errors": errors,
            "rss": crate::sys::self_rss_bytes(),
        })
    }

    /// Waits until every subscriber connected or failed, up to `timeout`.
    pub(crate) async fn wait_connected(&self, timeout: Duration, progress: bool) {
        let start = now_ns();
        let total = self.layout.subscribers;
        let mut last_print = start;
        loop {
            let done = self.connected.load(Relaxed) + self.failed.load(Relaxed);
            if done >= total || now_ns() - start > timeout.as_nanos() as u64 {
                return;
            }
            if progress && now_ns() - last_print > 2_000_000_000 {
                last_print = now_ns();
                eprintln!(
                    "  connecting: {} ok, {} failed of {total}",
                    self.connected.load(Relaxed),
                    self.failed.load(Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The sum of the children's [`Shared::ready_report`]s.
#[derive(Debug, Default)]
pub(crate) struct ReadyTotals {
    pub(crate) connected: usize,
    pub(crate) failed: usize,
    pub(crate) errors: Vec<(String, u64)>,
    /// Each child's RSS in bytes.
    pub(crate) rss: Vec<u64>,
}

impl ReadyTotals {
    /// Adds one child's report.
    pub(crate) fn add(&mut self, report: &serde_json::Value) {
        self.connected += report["connected"].as_u64().unwrap_or(0) as usize;
        self.failed += report["failed"].as_u64().unwrap_or(0) as usize;
        self.rss.push(report["rss"].as_u64().unwrap_or(0));
        for e in report["errors"].as_array().into_iter().flatten() {
            let kind = e[0].as_str().unwrap_or("");
            stats::add_kind(&mut self.errors, kind, e[1].as_u64().unwrap_or(0));
        }
    }
}

/// What one worker hands back.
pub(crate) struct WorkerOut {
    /// (subscriber index, stats)
    pub(crate) subs: Vec<(usize, SubStats)>,
    pub(crate) latency: Histogram<u64>,
}

struct WorkerState {
    subs: Vec<SubStats>,
    latency: Histogram<u64>,
}

/// Runs `threads` workers holding the subscribers; worker 0 also runs `coordinator`, whose
/// end stops everything. Returns the coordinator's result and the workers' stats.
pub(crate) fn run<C, F, R>(
    shared: Arc<Shared>,
    threads: usize,
    coordinator: C,
) -> anyhow::Result<(R, Vec<WorkerOut>)>
where
    C: FnOnce(Arc<Shared>) -> F + Send + 'static,
    F: Future<Output = R> + 'static,
    R: Send + 'static,
{
    let threads = threads.max(1);
    let mut handles = Vec::new();
    for wid in 1..threads {
        let shared = shared.clone();
        handles.push(std::thread::spawn(move || {
            block_on_local(async move { worker(shared, wid, threads).await })
        }));
    }
    let s0 = shared.clone();
    let (r, w0) = block_on_local(async move {
        let coord = async {
            let r = coordinator(s0.clone()).await;
            s0.stop.send_replace(true);
            r
        };
        tokio::join!(coord, worker(s0.clone(), 0, threads))
    })?;
    let mut outs = vec![w0];
    for h in handles {
        outs.push(
            h.join()
                .map_err(|_| anyhow::anyhow!("worker thread panicked"))??,
        );
    }
    Ok((r, outs))
}

fn block_on_local<F: Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    Ok(local.block_on(&rt, f))
}

async fn worker(shared: Arc<Shared>, wid: usize, threads: usize) -> WorkerOut {
    let mine: Vec<usize> = (wid..shared.layout.subscribers).step_by(threads).collect();
    let state = Rc::new(RefCell::new(WorkerState {
        subs: vec![SubStats::default(); mine.len()],
        latency: stats::histogram(),
    }));
    let permits = Rc::new(Semaphore::new((shared.concurrency / threads).max(1)));
    let mut tasks = Vec::with_capacity(mine.len());
    for (local, &global) in mine.iter().enumerate() {
        let shared = shared.clone();
        let state = state.clone();
        let permits = permits.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let c = global % shared.layout.channels;
            let permit = permits.acquire().await;
            let channel = shared.layout.channel_name(c);
            match shared.endpoint.any_subscriber(global, &channel).await {
                Ok(conn) => {
                    drop(permit);
                    shared.alive.fetch_add(1, Relaxed);
                    shared.connected.fetch_add(1, Relaxed);
                    match conn {
                        Sub::Ws(ws) => subscriber(ws, &shared, &state, local, c).await,
                        Sub::Http(h) => http_subscriber(h, &shared, &state, local, c).await,
                    }
                    shared.alive.fetch_sub(1, Relaxed);
                }
                Err(e) => {
                    shared.failed.fetch_add(1, Relaxed);
                    shared.connect_error(&e);
                    state.borrow_mut().subs[local].ended = Some("connect failed".into());
                }
            }
        }));
    }
    let mut stop = shared.stop.subscribe();
    let _ = stop.wait_for(|s| *s).await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    let state = Rc::try_unwrap(state)
        .ok()
        .expect("every task holding the state has ended")
        .into_inner();
    WorkerOut {
        subs: mine.into_iter().zip(state.subs).collect(),
        latency: state.latency,
    }
}

/// Reads one subscriber connection until it ends, accounting every payload.
async fn subscriber(
    mut ws: Ws,
    shared: &Shared,
    state: &RefCell<WorkerState>,
    local: usize,
    channel: usize,
) {
    let target = shared.endpoint.target;
    let mut batch = Vec::new();
    loop {
        let r = poll_fn(|cx| {
            if ws.has_pending_writes() {
                if let Poll::Ready(Err(e)) = ws.poll_flush(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            ws.poll_read_messages(cx, &mut batch)
        })
        .await;
        if let Err(e) = r {
            let mut st = state.borrow_mut();
            let sub = &mut st.subs[local];
            if sub.ended.is_none() {
                sub.ended = Some(format!("{e}"));
            }
            return;
        }
        let now = now_ns();
        let mut st = state.borrow_mut();
        let WorkerState { subs, latency } = &mut *st;
        let sub = &mut subs[local];
        let mut sc = Scan::default();
        let mut acc = Accounting::new(shared, now);
        for m in batch.drain(..) {
            match m {
                Message::Text(t) => acc.text(shared, sub, latency, channel, &t, &mut sc),
                Message::Close(c) => {
                    sub.ended = Some(match c {
                        Some(c) => format!("close {} {}", c.code, c.reason),
                        None => "close".into(),
                    });
                }
                _ => {}
            }
        }
        if sc.disconnect && sub.ended.is_none() {
            sub.ended = Some("disconnect push".into());
        }
        drop(st);
        acc.finish(shared);
        if sc.ping && shared.pongs.load(Relaxed) {
            ws.queue_message(&conn::pong(target));
        }
    }
}

/// Reads one subscriber connection over `http_stream` or `sse` until it ends, accounting
/// every payload as [`subscriber`] does.
async fn http_subscriber(
    mut sub_conn: HttpSub,
    shared: &Shared,
    state: &RefCell<WorkerState>,
    local: usize,
    channel: usize,
) {
    let mut buf = Vec::new();
    let sse = sub_conn.sse;
    loop {
        let mut ping = false;
        let mut sc = Scan::default();
        let mut acc = Accounting::new(shared, 0);
        let r = sub_conn
            .read(&mut buf, |messages| {
                acc.now = now_ns();
                ping |= HttpSub::has_ping(sse, messages);
                let mut st = state.borrow_mut();
                let WorkerState { subs, latency } = &mut *st;
                acc.text(
                    shared,
                    &mut subs[local],
                    latency,
                    channel,
                    messages,
                    &mut sc,
                );
            })
            .await;
        acc.finish(shared);
        let mut st = state.borrow_mut();
        let sub = &mut st.subs[local];
        if sc.disconnect && sub.ended.is_none() {
            sub.ended = Some("disconnect push".into());
        }
        if let Err(e) = r {
            if sub.ended.is_none() {
                sub.ended = Some(format!("{e}"));
            }
            return;
        }
        drop(st);
        if ping && shared.pongs.load(Relaxed) {
            sub_conn.pong();
        }
    }
}

/// Accounts the payloads of one read: deliveries, latency, the max-rate ring.
struct Accounting {
    now: u64,
    lat_from: u64,
    n: u64,
    copies: Option<u32>,
}

impl Accounting {
    fn new(shared: &Shared, now: u64) -> Self {
        Self {
            now,
            lat_from: shared.latency_from_ns.load(Relaxed),
            n: 0,
            copies: None,
        }
    }

    /// Accounts the payloads in `text` (one message, or several separated by line breaks).
    fn text(
        &mut self,
        shared: &Shared,
        sub: &mut SubStats,
        latency: &mut Histogram<u64>,
        channel: usize,
        text: &[u8],
        sc: &mut Scan,
    ) {
        let channels = shared.layout.channels as u64;
        conn::scan(shared.endpoint.target, text, sc, |Stamp { seq, t_ns }| {
            if seq == 0 {
                if !sub.barrier {
                    sub.barrier = true;
                    shared.barrier.fetch_add(1, Relaxed);
                }
                return;
            }
            sub.record(seq);
            self.n += 1;
            if t_ns >= self.lat_from {
                let _ = latency.record((self.now.saturating_sub(t_ns) / 1000).max(1));
            }
            if let Some(ring) = &shared.ring {
                let k = (seq - 1) * channels + channel as u64;
                let prev = ring[(k % RING as u64) as usize].fetch_add(1, Relaxed);
                let need = *self.copies.get_or_insert_with(|| shared.copies());
                if prev + 1 >= need {
                    shared.progress.notify_one();
                }
            }
        });
    }

    /// Adds the deliveries counted to the shared totals.
    fn finish(&self, shared: &Shared) {
        if self.n > 0 {
            shared.delivered.fetch_add(self.n, Relaxed);
            if self.now >= shared.window_start_ns.load(Relaxed)
                && self.now < shared.window_end_ns.load(Relaxed)
            {
                shared.delivered_window.fetch_add(self.n, Relaxed);
            }
        }
    }
}
